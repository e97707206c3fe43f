#!/usr/bin/env python3
"""Lists cycles among the core's top-level modules (src/*): module A depends on B when a file
of A names `crate::B`. Exit 1 when there is a cycle. Run from the repository root."""
import pathlib, re, sys

src = pathlib.Path("src")
deps = {}
for path in src.rglob("*.rs"):
    parts = path.relative_to(src).with_suffix("").parts
    if parts[0] in ("lib", "main"):
        continue
    module = parts[0]
    # Comments (docs linking to other modules) are not dependencies.
    text = "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("//"))
    found = set(re.findall(r"crate::([a-z_]+)", text))
    # `super::x` inside a module's own files stays inside it; between modules only crate:: counts.
    deps.setdefault(module, set()).update(m for m in found if m != module)

def cycles():
    seen, stack, out = set(), [], []
    def visit(m):
        if m in stack:
            out.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(deps.get(m, ())):
            visit(d)
        stack.pop()
    for m in sorted(deps):
        visit(m)
    return out

found = cycles()
for m in sorted(deps):
    print(f"{m}: {', '.join(sorted(deps[m])) or '-'}")
if found:
    print("cycles:")
    for c in found:
        print("  " + " -> ".join(c))
    sys.exit(1)
print("no cycles among src modules")
