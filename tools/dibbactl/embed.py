#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Turn a text file into a C header holding it as one string: embed.py INPUT OUTPUT SYMBOL."""
import sys

src, out, sym = sys.argv[1:4]
with open(src, encoding="utf-8") as f:
    text = f.read()
lines = ["/* Generated from %s by embed.py; do not edit. */" % src.rsplit("/", 1)[-1],
         "static const char %s[] =" % sym]
for line in text.splitlines(keepends=True):
    esc = line.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    lines.append('    "%s"' % esc)
lines[-1] += ";"
with open(out, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
