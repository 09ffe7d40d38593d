"""The layout docs/architecture.md describes, checked: who may import whom,
and how large a module or class may grow before the doc must say why."""

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

from aitnode.tx import known_types

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "aitnode")

# The core: consensus data, rules and storage.  No Twisted, no network.
CORE = {
    "consensus", "unstorable", "blocks", "chain", "crypto", "encoding", "errors", "evidence", "finality", "genesis", "local", "mempool",
    "params", "receipts", "rules", "state", "steps", "store", "tx", "jmt", "jmtnode", "treestore", "reorg", "proof", "light",
    "light_proofs",
}
FRAMEWORKS = {"twisted", "autobahn", "klein", "treq", "txaio", "werkzeug"}
# Protocol code reaches storage only through chain's and the local tables' APIs.
NO_LMDB = {"rpc", "web", "httpjson", "p2p", "queries", "proofs", "admission", "pipeline", "proposer"}
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 260
EXCEPTIONS = {}  # "module" or "module.Class" -> why (also in docs/architecture.md)


def modules():
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = os.path.relpath(path, PKG)[:-3].replace(os.sep, ".")
                yield name.removesuffix(".__init__"), path


def imports(path):
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            if node.module == "aitnode":
                out.update(f"aitnode.{a.name}" for a in node.names)
    return out


def top(name):
    return name.split(".")[0]


class LayoutTests(SynchronousTestCase):
    def test_core_imports_no_framework_and_no_shell(self):
        for name, path in modules():
            if top(name) not in CORE:
                continue
            for imp in imports(path):
                self.assertNotIn(top(imp), FRAMEWORKS, f"core module {name} imports {imp}")
                if imp.startswith("aitnode."):
                    self.assertIn(top(imp[len("aitnode."):]), CORE, f"core module {name} imports the shell's {imp}")

    def test_protocol_code_never_touches_lmdb(self):
        for name, path in modules():
            if top(name) not in NO_LMDB:
                continue
            for imp in imports(path):
                self.assertNotIn(imp, ("lmdb", "aitnode.store", "aitnode.local"), f"{name} imports {imp}")

    def test_sizes(self):
        for name, path in modules():
            src = open(path).read()
            lines = src.count("\n")
            if name not in EXCEPTIONS:
                self.assertLessEqual(lines, MAX_MODULE_LINES, f"aitnode/{name} has {lines} lines")
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, ast.ClassDef) and f"{name}.{node.name}" not in EXCEPTIONS:
                    n = node.end_lineno - node.lineno + 1
                    self.assertLessEqual(n, MAX_CLASS_LINES, f"{name}.{node.name} has {n} lines")

    def test_every_type_is_known_without_registration(self):
        # Rules are tables, not side effects of imports: a fresh interpreter
        # that imports only the chain knows all five types.
        import subprocess
        import sys

        out = subprocess.run(
            [sys.executable, "-c", "import aitnode.chain; from aitnode.tx import known_types; print(sorted(known_types()))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        self.assertEqual(out, str(sorted(known_types())))
        self.assertEqual(sorted(known_types()), ["AUTHORITY_UPDATE", "MINT", "PARAM_UPDATE", "RECEIPT_CLAIM", "TRANSFER"])

    def test_architecture_doc_names_every_module(self):
        with open(os.path.join(os.path.dirname(PKG), "docs", "architecture.md")) as f:
            doc = f.read()
        for name, _ in modules():
            if name in ("__init__",):
                continue
            self.assertIn(f"`{name.replace('.', '/')}`", doc, f"docs/architecture.md does not describe aitnode/{name}")
