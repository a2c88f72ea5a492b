#!/usr/bin/env python3
"""Writes a C++ header holding a text file as a string_view constant.

usage: embed_text.py INPUT OUTPUT NAME

The dashboard page (control/dashboard.html) stays a real file in the tree and is
built into the binary with this, so a VMM needs no install path to serve it.
"""
import sys

src, out, name = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(src, encoding="utf-8").read()
delim = "ftvm_embed"
if ")" + delim + '"' in text:
    sys.exit(f"embed_text.py: {src} contains the raw-string delimiter )" + delim)
# Raw string literals have a length limit on some compilers: concatenate chunks.
chunks = [text[i:i + 8000] for i in range(0, len(text), 8000)] or [""]
with open(out, "w", encoding="utf-8") as f:
    f.write(f"// Generated from {src.split('/')[-1]} by control/embed_text.py; do not edit.\n")
    f.write("#pragma once\n#include <string_view>\n\n")
    f.write(f"inline constexpr std::string_view {name} =\n")
    for c in chunks:
        f.write(f'    R"{delim}({c}){delim}"\n')
    f.write(";\n")
