#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""A fake EC2 Query API endpoint on 127.0.0.1 for the aws plugin tests (stdlib only).

It checks every request's SigV4 signature with its own implementation (hmac/hashlib) and the freshness of
X-Amz-Date, and answers RunInstances (idempotent by ClientToken), DescribeInstances (pending -> running after
--pending-polls describes; InvalidInstanceID.NotFound for the first --notfound describes after a launch),
TerminateInstances (shutting-down -> terminated after --pending-polls describes) and CreateTags.

Control endpoints (no signature):
  POST /_fault {"action": "RunInstances" | "*", "code": "...", "message": "...", "count": N, "status": 503}
  GET  /_state  -> {"instances": {...}, "calls": [...], "auth_failures": N, "faults": [...]}
  POST /_clear_faults   (drops every fault still armed)
  POST /_reset

    python3 fake_ec2.py --port 0 --access-key AK --secret SK --region us-east-1   # prints "PORT <n>" on stdout
"""
import argparse
import datetime
import hashlib
import hmac
import http.server
import json
import sys
import threading
import urllib.parse
from xml.sax.saxutils import escape

NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
STATUS = {"AuthFailure": 401, "SignatureDoesNotMatch": 403, "UnauthorizedOperation": 403,
          "RequestLimitExceeded": 503, "InsufficientInstanceCapacity": 500, "InternalError": 500}


class ApiError(Exception):
    def __init__(self, code, message, status=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS.get(code, 400)


def sigv4_uri_encode(s, keep_slash=False):
    safe = "-_.~" + ("/" if keep_slash else "")
    return urllib.parse.quote(s, safe=safe)


def canonical_query(query):
    pairs = []
    for part in query.split("&") if query else []:
        if not part:
            continue
        k, _, v = part.partition("=")
        pairs.append((sigv4_uri_encode(urllib.parse.unquote(k)), sigv4_uri_encode(urllib.parse.unquote(v))))
    return "&".join("%s=%s" % kv for kv in sorted(pairs))


def signing_key(secret, date, region, service):
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


class Fake:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.instances = {}  # id -> dict
        self.tokens = {}  # ClientToken -> [ids]
        self.calls = []
        self.faults = []
        self.auth_failures = 0
        self.seq = 0

    # ---- SigV4, recomputed independently of the client ----
    def verify(self, method, path, query, headers, body):
        auth = headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            raise ApiError("AuthFailure", "AWS was not able to validate the provided access credentials")
        fields = {}
        for item in auth[len("AWS4-HMAC-SHA256 "):].split(","):
            k, _, v = item.strip().partition("=")
            fields[k] = v
        try:
            akid, date, region, service, term = fields["Credential"].split("/")
            signed = fields["SignedHeaders"].split(";")
            signature = fields["Signature"]
        except (KeyError, ValueError):
            raise ApiError("AuthFailure", "malformed Authorization header")
        if akid != self.args.access_key:
            raise ApiError("AuthFailure", "AWS was not able to validate the provided access credentials")
        amz_date = headers.get("x-amz-date", "")
        try:
            t = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            raise ApiError("AuthFailure", "missing or malformed X-Amz-Date")
        skew = abs((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds())
        if skew > self.args.max_skew:
            raise ApiError("AuthFailure", "Signature expired: %s is out of the allowed window" % amz_date)
        if date != amz_date[:8] or region != self.args.region or service != "ec2" or term != "aws4_request":
            raise ApiError("AuthFailure", "credential scope %s/%s/%s is wrong" % (date, region, service))
        for must in ("host", "x-amz-date"):
            if must not in signed:
                raise ApiError("AuthFailure", "header %s is not signed" % must)
        if self.args.session_token:
            if headers.get("x-amz-security-token") != self.args.session_token or \
                    "x-amz-security-token" not in signed:
                raise ApiError("AuthFailure", "The security token included in the request is invalid")
        if signed != sorted(signed):
            raise ApiError("AuthFailure", "SignedHeaders must be sorted")
        canon_headers = ""
        for name in signed:
            if name not in headers:
                raise ApiError("AuthFailure", "signed header %s is missing" % name)
            canon_headers += "%s:%s\n" % (name, " ".join(headers[name].split()))
        creq = "\n".join([method, path or "/", canonical_query(query), canon_headers, ";".join(signed),
                          hashlib.sha256(body).hexdigest()])
        sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, "%s/%s/%s/aws4_request" % (date, region, service),
                         hashlib.sha256(creq.encode()).hexdigest()])
        want = hmac.new(signing_key(self.args.secret, date, region, service), sts.encode(),
                        hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, signature):
            raise ApiError("SignatureDoesNotMatch",
                           "The request signature we calculated does not match the signature you provided.")

    # ---- faults ----
    def take_fault(self, action):
        for f in self.faults:
            if f["count"] > 0 and f["action"] in (action, "*"):
                f["count"] -= 1
                e = ApiError(f["code"], f.get("message", "injected %s" % f["code"]), f.get("status"))
                e.injected = True
                raise e

    # ---- actions ----
    def item_xml(self, inst, state_tag="instanceState"):
        tags = "".join("<item><key>%s</key><value>%s</value></item>" % (escape(k), escape(v))
                       for k, v in sorted(inst["tags"].items()))
        return ("<item><instanceId>%s</instanceId><imageId>%s</imageId>"
                "<%s><code>%d</code><name>%s</name></%s>"
                "<privateDnsName>%s</privateDnsName><instanceType>%s</instanceType>"
                "<launchTime>%s</launchTime><privateIpAddress>%s</privateIpAddress>"
                "<tagSet>%s</tagSet></item>") % (
            inst["id"], escape(inst["image_id"]), state_tag, STATE_CODES[inst["state"]], inst["state"], state_tag,
            inst["private_dns"], escape(inst["instance_type"]), inst["launch_time"], inst["private_ip"], tags)

    def run_instances(self, p):
        for need in ("ImageId", "InstanceType", "MinCount", "MaxCount"):
            if need not in p:
                raise ApiError("MissingParameter", "The request must contain the parameter %s" % need)
        token = p.get("ClientToken", "")
        if token and token in self.tokens:
            ids = self.tokens[token]
        else:
            n = int(p["MaxCount"])
            if n < 1 or int(p["MinCount"]) > n:
                raise ApiError("InvalidParameterValue", "MinCount/MaxCount")
            tags = {}
            if p.get("TagSpecification.1.ResourceType") == "instance":
                i = 1
                while "TagSpecification.1.Tag.%d.Key" % i in p:
                    tags[p["TagSpecification.1.Tag.%d.Key" % i]] = p.get("TagSpecification.1.Tag.%d.Value" % i, "")
                    i += 1
            ids = []
            for _ in range(n):
                self.seq += 1
                iid = "i-%017x" % (0xd1bba000 + self.seq)
                ip = "10.0.%d.%d" % (self.seq // 250, self.seq % 250 + 4)
                self.instances[iid] = {
                    "id": iid, "state": "pending", "image_id": p["ImageId"], "instance_type": p["InstanceType"],
                    "private_ip": ip, "private_dns": "ip-%s.ec2.internal" % ip.replace(".", "-"),
                    "launch_time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                    "tags": tags, "client_token": token, "key_name": p.get("KeyName", ""),
                    "subnet_id": p.get("SubnetId", ""),
                    "security_groups": [v for k, v in sorted(p.items()) if k.startswith("SecurityGroupId.")],
                    "iam_instance_profile": p.get("IamInstanceProfile.Name", ""),
                    "user_data": p.get("UserData", ""), "describes": 0, "notfound_left": self.args.notfound}
                ids.append(iid)
            if token:
                self.tokens[token] = ids
        items = "".join(self.item_xml(self.instances[i]) for i in ids)
        return ("RunInstancesResponse", "<reservationId>r-%08x</reservationId><ownerId>123456789012</ownerId>"
                "<groupSet/><instancesSet>%s</instancesSet>" % (abs(hash(tuple(ids))) & 0xffffffff, items))

    def advance(self, inst):
        inst["describes"] += 1
        if inst["state"] == "pending" and inst["describes"] >= self.args.pending_polls:
            inst["state"] = "running"
        elif inst["state"] == "shutting-down" and inst["describes"] >= self.args.pending_polls:
            inst["state"] = "terminated"

    def indexed(self, p, prefix):
        out, i = [], 1
        while "%s.%d" % (prefix, i) in p:
            out.append(p["%s.%d" % (prefix, i)])
            i += 1
        return out

    def describe_instances(self, p):
        ids = self.indexed(p, "InstanceId")
        for iid in ids:
            inst = self.instances.get(iid)
            if inst is None or inst["notfound_left"] > 0:
                if inst is not None:
                    inst["notfound_left"] -= 1
                raise ApiError("InvalidInstanceID.NotFound", "The instance ID '%s' does not exist" % iid)
        chosen = [self.instances[i] for i in ids] if ids else list(self.instances.values())
        f = 1
        while "Filter.%d.Name" % f in p:
            name, values = p["Filter.%d.Name" % f], self.indexed(p, "Filter.%d.Value" % f)
            if name.startswith("tag:"):
                chosen = [i for i in chosen if i["tags"].get(name[4:]) in values]
            elif name == "instance-state-name":
                chosen = [i for i in chosen if i["state"] in values]
            else:
                raise ApiError("InvalidParameterValue", "The filter '%s' is invalid" % name)
            f += 1
        for inst in chosen:
            self.advance(inst)
        items = "".join(self.item_xml(i) for i in chosen)
        body = "<reservationSet>%s</reservationSet>" % (
            "<item><reservationId>r-0</reservationId><instancesSet>%s</instancesSet></item>" % items if items else "")
        return "DescribeInstancesResponse", body

    def terminate_instances(self, p):
        ids = self.indexed(p, "InstanceId")
        if not ids:
            raise ApiError("MissingParameter", "The request must contain the parameter InstanceId")
        for iid in ids:
            if iid not in self.instances:
                raise ApiError("InvalidInstanceID.NotFound", "The instance ID '%s' does not exist" % iid)
        items = ""
        for iid in ids:
            inst = self.instances[iid]
            prev = inst["state"]
            if prev != "terminated":
                inst["state"] = "shutting-down"
                inst["describes"] = 0
            items += ("<item><instanceId>%s</instanceId><currentState><code>%d</code><name>%s</name></currentState>"
                      "<previousState><code>%d</code><name>%s</name></previousState></item>") % (
                iid, STATE_CODES[inst["state"]], inst["state"], STATE_CODES[prev], prev)
        return "TerminateInstancesResponse", "<instancesSet>%s</instancesSet>" % items

    def create_tags(self, p):
        ids = self.indexed(p, "ResourceId")
        for iid in ids:
            if iid not in self.instances:
                raise ApiError("InvalidInstanceID.NotFound", "The instance ID '%s' does not exist" % iid)
        i = 1
        while "Tag.%d.Key" % i in p:
            for iid in ids:
                self.instances[iid]["tags"][p["Tag.%d.Key" % i]] = p.get("Tag.%d.Value" % i, "")
            i += 1
        return "CreateTagsResponse", "<return>true</return>"

    ACTIONS = {"RunInstances": run_instances, "DescribeInstances": describe_instances,
               "TerminateInstances": terminate_instances, "CreateTags": create_tags}

    def handle(self, method, path, query, headers, body):
        """Returns (status, xml)."""
        with self.lock:
            self.seq += 1
            rid = "req-%d" % self.seq
            try:
                self.verify(method, path, query, headers, body)
                params = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False))
                params.update(urllib.parse.parse_qsl(query, keep_blank_values=True))
                action = params.get("Action", "")
                if params.get("Version") != "2016-11-15":
                    raise ApiError("InvalidParameterValue", "Version must be 2016-11-15")
                if action not in self.ACTIONS:
                    raise ApiError("InvalidAction", "The action %s is not valid for this web service." % action)
                self.calls.append(action)
                self.take_fault(action)
                tag, inner = self.ACTIONS[action](self, params)
                return 200, '<?xml version="1.0" encoding="UTF-8"?>\n<%s xmlns="%s"><requestId>%s</requestId>%s</%s>' % (
                    tag, NS, rid, inner, tag)
            except ApiError as e:
                if e.code in ("AuthFailure", "SignatureDoesNotMatch") and not getattr(e, "injected", False):
                    self.auth_failures += 1
                return e.status, ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>%s</Code>'
                                  '<Message>%s</Message></Error></Errors><RequestID>%s</RequestID></Response>') % (
                    escape(e.code), escape(e.message), rid)

    def state(self):
        with self.lock:
            return {"instances": self.instances, "calls": self.calls, "auth_failures": self.auth_failures,
                    "faults": self.faults, "tokens": self.tokens}


def make_handler(fake):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):  # quiet; never logs headers
            if fake.args.verbose:
                sys.stderr.write("[fake_ec2] %s\n" % (fmt % a))

        def send(self, status, body, ctype="text/xml;charset=UTF-8"):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def read_body(self):
            n = int(self.headers.get("Content-Length") or 0)
            if n > 1 << 20:
                raise ValueError("body too large")
            return self.rfile.read(n) if n else b""

        def do_GET(self):
            u = urllib.parse.urlsplit(self.path)
            if u.path == "/_state":
                return self.send(200, json.dumps(fake.state()), "application/json")
            self.dispatch("GET", u, b"")

        def do_POST(self):
            u = urllib.parse.urlsplit(self.path)
            body = self.read_body()
            if u.path == "/_fault":
                f = json.loads(body or b"{}")
                f.setdefault("action", "*")
                f.setdefault("count", 1)
                with fake.lock:
                    fake.faults.append(f)
                return self.send(200, "{}", "application/json")
            if u.path == "/_clear_faults":
                with fake.lock:
                    fake.faults = []
                return self.send(200, "{}", "application/json")
            if u.path == "/_reset":
                with fake.lock:
                    fake.reset()
                return self.send(200, "{}", "application/json")
            self.dispatch("POST", u, body)

        def dispatch(self, method, u, body):
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, xml = fake.handle(method, u.path, u.query, headers, body)
            self.send(status, xml)

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--access-key", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--session-token", default="")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--pending-polls", type=int, default=2)
    ap.add_argument("--notfound", type=int, default=1)
    ap.add_argument("--max-skew", type=int, default=300)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    fake = Fake(args)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(fake))
    sys.stdout.write("PORT %d\n" % srv.server_address[1])
    sys.stdout.flush()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
