#!/usr/bin/env python3
"""Lists the imports and exports of WebAssembly modules and checks Proxy-Wasm entry points.

Usage: wasm-info.py [--check] MODULE.wasm...

Prints each import as `import <module>.<name> (<kind>)` and each export as
`export <name> (<kind>)`. With --check, exits 1 unless every module exports
`proxy_abi_version_0_2_*`, `memory`, `_initialize` (or `_start`) and
`proxy_on_memory_allocate` (or `malloc`). Standard library only; no wabt needed.
"""

import sys

KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}


def leb128(data, pos):
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def name(data, pos):
    size, pos = leb128(data, pos)
    return data[pos:pos + size].decode("utf-8"), pos + size


def skip_limits(data, pos):
    flags = data[pos]
    _, pos = leb128(data, pos + 1)
    if flags & 1:
        _, pos = leb128(data, pos)
    return pos


def parse(data):
    """Returns ([(module, name, kind)], [(name, kind)])."""
    if data[:4] != b"\0asm" or data[4:8] != b"\1\0\0\0":
        raise ValueError("not a WebAssembly 1.0 module")
    imports, exports = [], []
    pos = 8
    while pos < len(data):
        section = data[pos]
        size, pos = leb128(data, pos + 1)
        end = pos + size
        if section == 2:  # import section
            count, pos = leb128(data, pos)
            for _ in range(count):
                module, pos = name(data, pos)
                field, pos = name(data, pos)
                kind = data[pos]
                pos += 1
                if kind == 0:  # type index
                    _, pos = leb128(data, pos)
                elif kind == 1:  # reftype + limits
                    pos = skip_limits(data, pos + 1)
                elif kind == 2:  # limits
                    pos = skip_limits(data, pos)
                elif kind == 3:  # valtype + mutability
                    pos += 2
                elif kind == 4:  # attribute + type index
                    _, pos = leb128(data, pos + 1)
                imports.append((module, field, KINDS.get(kind, str(kind))))
        elif section == 7:  # export section
            count, pos = leb128(data, pos)
            for _ in range(count):
                field, pos = name(data, pos)
                kind = data[pos]
                _, pos = leb128(data, pos + 1)
                exports.append((field, KINDS.get(kind, str(kind))))
        pos = end
    return imports, exports


def missing_entry_points(exports):
    names = {field for field, _ in exports}
    wanted = [
        ("proxy_abi_version_0_2_*", any(n.startswith("proxy_abi_version_0_2_") for n in names)),
        ("memory", "memory" in names),
        ("_initialize or _start", "_initialize" in names or "_start" in names),
        ("proxy_on_memory_allocate or malloc",
         "proxy_on_memory_allocate" in names or "malloc" in names),
    ]
    return [what for what, ok in wanted if not ok]


def main(argv):
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    failed = False
    for path in paths:
        with open(path, "rb") as f:
            imports, exports = parse(f.read())
        print(f"{path}: {len(imports)} imports, {len(exports)} exports")
        for module, field, kind in imports:
            print(f"  import {module}.{field} ({kind})")
        for field, kind in exports:
            print(f"  export {field} ({kind})")
        missing = missing_entry_points(exports)
        if check and missing:
            print(f"{path}: missing exports: {', '.join(missing)}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
