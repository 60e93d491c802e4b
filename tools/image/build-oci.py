#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Build deterministic OCI image archives (oci-layout tar) that `ctr images import` accepts.

  build-oci.py busybox --out busybox.tar [--name docker.io/library/busybox:latest] [--busybox /bin/busybox]
  build-oci.py pause --pause-bin BUILD/tools/pause/dibba-pause --out pause.tar [--name registry.local/dibba/pause:1]

The same inputs always give the same bytes (fixed mtimes, owners and ordering; gzip without a name or time),
so the image digests only change when busybox or dibba-pause change.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile

DEFAULT_NAMES = {
    "busybox": "docker.io/library/busybox:latest",
    "pause": "registry.local/dibba/pause:1",
}
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EPOCH = "1970-01-01T00:00:00Z"


def goarch():
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
            "i686": "386"}.get(m, m)


class Layer:
    """An in-memory rootfs tar with fixed metadata."""

    def __init__(self):
        self.entries = {}  # path -> (TarInfo, data or None)

    def _info(self, path, kind, mode, uid=0, gid=0):
        ti = tarfile.TarInfo(path)
        ti.type = kind
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = 0
        return ti

    def dir(self, path, mode=0o755):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in self.entries:
                self.entries[parent] = (self._info(parent, tarfile.DIRTYPE, 0o755), None)
        p = path.strip("/")
        self.entries[p] = (self._info(p, tarfile.DIRTYPE, mode), None)

    def file(self, path, data, mode=0o644):
        p = path.strip("/")
        self.dir(os.path.dirname("/" + p)) if "/" in p else None
        ti = self._info(p, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.entries[p] = (ti, data)

    def symlink(self, path, target):
        p = path.strip("/")
        ti = self._info(p, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.entries[p] = (ti, None)

    def tar_bytes(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for p in sorted(self.entries):
                ti, data = self.entries[p]
                tf.addfile(ti, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def gzip_bytes(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def busybox_layer(busybox):
    with open(busybox, "rb") as f:
        bb = f.read()
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout
    applets = sorted(a for a in out.split() if a and "/" not in a and a != "busybox")
    if "sh" not in applets or "httpd" not in applets:
        sys.exit("build-oci: %s lacks the sh or httpd applet" % busybox)
    layer = Layer()
    for d in ("bin", "dev", "etc", "proc", "sys", "root", "home", "var", "var/run", "usr", "usr/bin", "www"):
        layer.dir(d)
    layer.dir("root", 0o700)
    layer.dir("tmp", 0o1777)
    layer.dir("var/tmp", 0o1777)
    layer.file("bin/busybox", bb, 0o755)
    for a in applets:
        layer.symlink("bin/" + a, "busybox")
    layer.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
               b"nobody:x:65534:65534:nobody:/home:/bin/sh\n")
    layer.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    layer.file("etc/hostname", b"busybox\n")
    layer.file("www/index.html", b"<!doctype html><title>dibba</title><p>hello from dibba busybox</p>\n")
    cfg = {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"}
    return layer, cfg


def pause_layer(pause_bin):
    with open(pause_bin, "rb") as f:
        data = f.read()
    if b"\x7fELF" != data[:4]:
        sys.exit("build-oci: %s is not an ELF binary" % pause_bin)
    layer = Layer()
    layer.file("pause", data, 0o755)
    cfg = {"Env": [PATH_ENV], "Entrypoint": ["/pause"], "WorkingDir": "/"}
    return layer, cfg


def write_archive(out, name, layer, runcfg):
    raw = layer.tar_bytes()
    gz = gzip_bytes(raw)
    arch = goarch()
    config = {
        "created": EPOCH,
        "architecture": arch,
        "os": "linux",
        "config": runcfg,
        "rootfs": {"type": "layers", "diff_ids": [sha(raw)]},
        "history": [{"created": EPOCH, "created_by": "dibba tools/image/build-oci.py"}],
    }
    config_b = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config_b),
                   "size": len(config_b)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(gz),
                    "size": len(gz)}],
    }
    manifest_b = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(manifest_b),
            "size": len(manifest_b),
            "annotations": {"org.opencontainers.image.ref.name": name, "io.containerd.image.name": name},
            "platform": {"architecture": arch, "os": "linux"},
        }],
    }
    index_b = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    outer = Layer()
    outer.file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    for blob in (gz, config_b, manifest_b):
        outer.file("blobs/sha256/" + sha(blob)[7:], blob)
    outer.file("index.json", index_b)
    tmp = out + ".tmp.%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(outer.tar_bytes())
    os.replace(tmp, out)
    return sha(manifest_b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", choices=sorted(DEFAULT_NAMES))
    ap.add_argument("--out", required=True, help="archive to write")
    ap.add_argument("--name", help="image reference (default: %s)" % DEFAULT_NAMES)
    ap.add_argument("--busybox", default="/bin/busybox", help="static busybox binary (busybox-static)")
    ap.add_argument("--pause-bin", help="the built static tools/pause binary (BUILD/tools/pause/dibba-pause)")
    a = ap.parse_args()
    name = a.name or DEFAULT_NAMES[a.image]
    if a.image == "busybox":
        layer, cfg = busybox_layer(a.busybox)
    else:
        if not a.pause_bin:
            ap.error("pause needs --pause-bin")
        layer, cfg = pause_layer(a.pause_bin)
    digest = write_archive(a.out, name, layer, cfg)
    print("%s %s %s" % (a.out, name, digest))


if __name__ == "__main__":
    main()
