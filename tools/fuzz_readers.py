"""Fuzzing nnxc's readers with mutated real files: every input gets an nnxc error or a
right answer, never another exception, a hang, a crash or a read outside the model folder.

    nice -n 10 .venv/bin/python tools/fuzz_readers.py --count 5000 --seed 0
                                   [--readers parse,from_json,load,load_onnx] [--timeout 60]

Readers and what "a right answer" means for each:

  parse      ``nnxc.ir.parse(text)``; an accepted graph prints, its text parses back and
             prints the same, and ``verify`` either passes or raises VerifyError
  from_json  ``nnxc.ir.from_json(text)``; an accepted graph passes ``verify`` without type
             checks, prints, and its text parses back and prints the same; ``verify``
             with types passes or raises VerifyError
  load       ``nnxc.load(path)``; an accepted artifact runs on the golden inputs (or refuses
             them with an nnxc error); a refusal comes from a check, not load's catch-all
  load_onnx  ``nnxc.runtime.onnx_io.load_onnx(path)`` in a folder that also holds symbolic
             and hard links, a FIFO and a folder, next to a secret file outside it; an
             accepted model holds no byte of the secret

Inputs are mutations of real files (the golden IR texts, their JSON, the golden artifact,
ONNX files with external data in initializers, subgraphs, functions and training_info):
byte flips, token deletion and duplication, line shuffles, truncation, deep nesting,
huge numbers, unicode, and mutations that know the format (JSON values, manifests and
sections re-hashed so they pass the checksums, protobuf fields and external-data entries).
Input ``i`` of reader ``r`` is a function of ``(seed, r, i)`` only, so a failure reruns with
``--only r:i``.

Each reader runs in a worker process, each input under ``signal.alarm`` (a hang is killed
and counted); a worker that dies is counted as a crash and replaced. Prints, per reader,
the inputs, how many were accepted and refused (by error type), and every escaped
exception, hang and crash (with the input index).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import random
import re
import signal
import struct
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GOLDEN_IR = os.path.join(ROOT, "tests", "golden")
GOLDEN_ARTIFACTS = os.path.join(ROOT, "tests", "golden_artifacts")
READERS = ("parse", "from_json", "load", "load_onnx")
SECRET = b"\x8bSECRET-OUTSIDE-THE-MODEL-FOLDER\x9a"  # never in a tensor of an accepted model


class InputTimeout(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` eats it."""


def _on_alarm(signum, frame):
    raise InputTimeout()


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise InputTimeout when the body runs longer than ``seconds`` (main thread only)."""
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- text mutations ------------------------------------------------------------------------

_TOKEN = re.compile(r"\s+|\w+|[^\w\s]", re.UNICODE)
_UNICODE = ["\0", "\u00e9", "e\u0301", "\u202e", "\u2028", "\u2029", "\ufeff", "\U0001f600",
            "\r", "\t", "\x0b", "\x0c", "\x85", "\u0661", "\u00b2", "\u2167", "\uff10", "\ud800",
            "\u00a0", "\u3000", "%\u00e9", "\u0130", "\u017f", "\\", '"', "\\u0000"]
_HUGE = ["9" * 30, "9" * 400, "-" + "9" * 30, "1" + "0" * 5000, "1e999", "-1e999", "1e-999",
         "18446744073709551616", "-9223372036854775809", "2147483648", "4294967296", "1e308",
         "nan", "-inf", "0" * 50 + "7", "1.7976931348623159e308", "-0"]
_NESTS = (40, 400, 4000, 100_000)


def _pick(rng: random.Random, n: int) -> int:
    return rng.randrange(n) if n else 0


def flip_byte(rng, text: str) -> str:
    raw = bytearray(text.encode("utf-8", "surrogatepass"))
    if not raw:
        return "\x00"
    i = _pick(rng, len(raw))
    raw[i] ^= 1 << rng.randrange(8)
    return raw.decode("utf-8", "replace")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def delete_tokens(rng, text: str) -> str:
    toks = _tokens(text)
    i = _pick(rng, len(toks))
    del toks[i:i + rng.choice((1, 1, 2, 3, 8))]
    return "".join(toks)


def duplicate_tokens(rng, text: str) -> str:
    toks = _tokens(text)
    i = _pick(rng, len(toks))
    span = toks[i:i + rng.choice((1, 1, 2, 4))]
    toks[i:i] = span * rng.choice((1, 1, 2, 50))
    return "".join(toks)


def replace_token(rng, text: str) -> str:
    toks = _tokens(text)
    if len(toks) < 2:
        return text
    toks[_pick(rng, len(toks))] = toks[_pick(rng, len(toks))]
    return "".join(toks)


def shuffle_lines(rng, text: str) -> str:
    lines = text.split("\n")
    i, j = _pick(rng, len(lines)), _pick(rng, len(lines))
    how = rng.randrange(4)
    if how == 0:
        del lines[i]
    elif how == 1:
        lines.insert(j, lines[i])
    elif how == 2:
        lines[i], lines[j] = lines[j], lines[i]
    else:
        lines.insert(j, lines.pop(i))
    return "\n".join(lines)


def truncate(rng, text: str) -> str:
    return text[:_pick(rng, len(text) + 1)]


def deep_nesting(rng, text: str) -> str:
    n = rng.choice(_NESTS)
    open_, close = rng.choice((("(", ")"), ("[", "]"), ("{", "}"), ("dim(", ")"), ("((", "),)")))
    i = _pick(rng, len(text) + 1)
    if rng.random() < 0.5:  # balanced around a token
        m = _TOKEN.match(text, i)
        j = m.end() if m else i
        return text[:i] + open_ * n + text[i:j] + close * n + text[j:]
    return text[:i] + open_ * n + text[i:]


def huge_number(rng, text: str) -> str:
    nums = list(re.finditer(r"-?\d+(\.\d+)?(e-?\d+)?", text))
    if not nums:
        return text + rng.choice(_HUGE)
    m = rng.choice(nums)
    return text[:m.start()] + rng.choice(_HUGE) + text[m.end():]


def unicode(rng, text: str) -> str:
    i = _pick(rng, len(text) + 1)
    s = rng.choice(_UNICODE)
    if rng.random() < 0.3 and i < len(text):  # replace a character
        return text[:i] + s + text[i + 1:]
    return text[:i] + s + text[i:]


TEXT_MUTATIONS = (flip_byte, delete_tokens, duplicate_tokens, replace_token, shuffle_lines,
                  truncate, deep_nesting, huge_number, unicode)


def mutate_text(rng, text: str, rounds: int | None = None) -> str:
    for _ in range(rounds or rng.choice((1, 1, 1, 2, 3))):
        text = rng.choice(TEXT_MUTATIONS)(rng, text)
    return text


# -- IR text: deep structures nothing but a fuzzer writes ---------------------------------

def nested_regions(depth: int) -> str:
    """A graph whose cond nests ``depth`` levels deep (each branch holds the next cond)."""
    lines = ["graph @Deep(%p: i32[], %x: f32[4]) {"]
    for d in range(depth):
        pad = "  " * (d + 1)
        lines.append(f"{pad}%r{d}: f32[4] = cond(%p, %{'x' if d == 0 else f'a{d - 1}'}) {{")
        lines.append(f"{pad}^(%a{d}: f32[4]):")
    lines.append("  " * (depth + 1) + f"yield %a{depth - 1}")
    for d in reversed(range(depth)):
        pad = "  " * (d + 1)
        lines.append(f"{pad}}}")
        if d:
            lines.append(f"{pad}yield %r{d}")
    lines.append("  return %r0")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- JSON: mutations of the document's values --------------------------------------------

_JSON_VALUES = [None, True, False, 0, -1, 1, 2 ** 31, 2 ** 64, -2 ** 63 - 1, 10 ** 400, 1.5,
                1e308, -0.0, "", "x", "B", "-3", "2*B", "f32", "key<fry>", "Param", "%x",
                "a b", "0", "c0", "\u00e9", "\0", "x" * 300, [], {}, [1, 2], ["B", 3],
                {"float": "nan"}, {"float": "zzz"}, {"dtype": "f32"}, {"dtype": "nope"},
                {"dim": "B"}, {"dim": "(("}, {"enum": "E", "member": "M"},
                {"enum": "1x", "member": ""}, {"record": "R", "fields": [["a", 1]]},
                {"record": "R", "fields": [["a b", 1]]}, {"record": "R", "fields": 3},
                {"value": 1, "dtype": "i32"}, {"value": 2 ** 40, "dtype": "i8"},
                {"value": True, "dtype": "f32"}, {"value": {"complex": [1, 2]}, "dtype": "c64"},
                {"value": {"complex": 1}, "dtype": "c64"}, {"dtype": "f32", "shape": []},
                {"dtype": "f32", "shape": [-1]}, {"dtype": "f32", "shape": ["(("]},
                {"dtype": "f32", "shape": [True]}, {"dtype": "f32", "shape": [1.5]}]


def _json_paths(doc, path=()):
    yield path, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _json_paths(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _json_paths(v, path + (i,))


def _json_get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def mutate_json_doc(rng, doc):
    """One change to a parsed JSON document (in place where possible); returns the doc."""
    paths = list(_json_paths(doc))
    path, node = rng.choice(paths)
    how = rng.randrange(8)
    if not path:
        return rng.choice(_JSON_VALUES) if how == 0 else doc
    parent, key = _json_get(doc, path[:-1]), path[-1]
    if how == 0 and isinstance(parent, dict):
        del parent[key]
    elif how == 0 and isinstance(parent, list):
        del parent[key]
    elif how == 1 and isinstance(parent, list):
        parent.insert(key, json.loads(json.dumps(node)))
    elif how == 2:  # a value from elsewhere in the document (duplicate ids, wrong kinds)
        parent[key] = json.loads(json.dumps(rng.choice(paths)[1]))
    elif how == 3 and isinstance(parent, dict):  # an unknown or duplicated key
        parent[rng.choice(["zz", "id", "op", "type", "extra", str(key) + "_"])] = node
    elif how == 4 and isinstance(node, str) and node:  # an edited string (names, ids, dtypes)
        parent[key] = mutate_text(rng, node, 1)
    elif how == 5 and isinstance(node, (int, float)) and not isinstance(node, bool):
        parent[key] = rng.choice([-node, node + 1, node * 2 ** 40, 10 ** 400, -1, 0.5])
    else:
        parent[key] = json.loads(json.dumps(rng.choice(_JSON_VALUES)))
    return doc


def mutate_json(rng, text: str) -> str:
    try:
        doc = json.loads(text) if rng.random() < 0.55 else None
    except (ValueError, RecursionError):  # an earlier round broke the JSON
        doc = None
    if doc is not None:
        for _ in range(rng.choice((1, 1, 2, 3))):
            doc = mutate_json_doc(rng, doc)
        out = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
        if rng.random() < 0.1:  # a deeply nested value, written as text (json.dumps recurses)
            n = rng.choice(_NESTS)
            out = out.replace('"inputs": [', '"inputs": ' + "[" * n + "]" * (n - 1) + ", [", 1)
        return out
    return mutate_text(rng, text)


# -- artifacts -----------------------------------------------------------------------------

def _artifact_parts(data: bytes):
    from nnxc.runtime import artifact_format as fmt
    mlen = struct.unpack_from("<Q", data, 16)[0]
    manifest = json.loads(data[fmt.HEADER_SIZE:fmt.HEADER_SIZE + mlen])
    payload = data[fmt.HEADER_SIZE + mlen:]
    return manifest, payload


def _rehashed(manifest: dict, payload: bytes, fix_payload: bool = True) -> bytes:
    """The file of ``manifest`` and ``payload`` with hashes that match them."""
    from nnxc.runtime import artifact_format as fmt
    if fix_payload and isinstance(manifest.get("payload"), dict):
        manifest["payload"] = dict(manifest["payload"], length=len(payload),
                                   sha256=hashlib.sha256(payload).hexdigest())
    text = json.dumps(manifest, sort_keys=True, indent=1).encode()
    header = struct.pack("<8sIIQ32s", fmt.MAGIC, fmt.FORMAT_VERSION, 0, len(text),
                         hashlib.sha256(text).digest())
    return header + text + payload


def _with_section(manifest: dict, payload: bytes, name: str, data: bytes) -> bytes:
    from nnxc.runtime import artifact_format as fmt
    sections = {k: payload[v["offset"]:v["offset"] + v["length"]]
                for k, v in manifest["sections"].items()}
    sections[name] = data
    m = {k: v for k, v in manifest.items() if k not in ("format_version", "sections", "payload")}
    return fmt.pack(m, sections)[0]


def _mutate_weights(rng, section: bytes) -> bytes:
    n = struct.unpack_from("<Q", section)[0]
    header = section[8:8 + n].decode()
    header = mutate_json(rng, header) if rng.random() < 0.8 else header
    raw = header.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw + section[8 + n:]


def _flip_bytes(rng, data: bytes, k: int = 1) -> bytes:
    raw = bytearray(data)
    for _ in range(k):
        if raw:
            raw[_pick(rng, len(raw))] ^= 1 << rng.randrange(8)
    return bytes(raw)


def mutate_artifact(rng, data: bytes, other: bytes) -> bytes:
    """A mutation of the artifact file ``data``; ``other`` is another model's artifact."""
    manifest, payload = _artifact_parts(data)
    secs = manifest["sections"]
    how = rng.randrange(10)
    if how == 0:  # raw bytes: the checksums refuse these
        return rng.choice([lambda: _flip_bytes(rng, data, rng.choice((1, 4))),
                           lambda: data[:_pick(rng, len(data))],
                           lambda: data + data[-_pick(rng, 64):],
                           lambda: data[:56] + data[56 + _pick(rng, 64):]])()
    if how <= 4:  # the manifest, edited and re-hashed
        text = json.dumps(manifest)
        for _ in range(rng.choice((1, 1, 2))):
            text = mutate_json(rng, text)
        try:
            edited = json.loads(text)
        except (ValueError, RecursionError):
            edited = None
        if not isinstance(edited, dict):  # not JSON any more: re-hash the raw text
            from nnxc.runtime import artifact_format as fmt
            raw = text.encode("utf-8", "surrogatepass")
            header = struct.pack("<8sIIQ32s", fmt.MAGIC, fmt.FORMAT_VERSION, 0, len(raw),
                                 hashlib.sha256(raw).digest())
            return header + raw + payload
        return _rehashed(edited, payload, fix_payload=rng.random() < 0.9)
    if how == 5:  # the weights' safetensors header
        w = secs["weights"]
        return _with_section(manifest, payload, "weights",
                             _mutate_weights(rng, payload[w["offset"]:w["offset"] + w["length"]]))
    if how == 6:  # the weights' bytes
        w = secs["weights"]
        return _with_section(manifest, payload, "weights", _flip_bytes(
            rng, payload[w["offset"]:w["offset"] + w["length"]], rng.choice((1, 8))))
    if how == 7:  # the exported bytes
        e = secs["exported"]
        blob = payload[e["offset"]:e["offset"] + e["length"]]
        blob = rng.choice([lambda: _flip_bytes(rng, blob, rng.choice((1, 3))),
                           lambda: blob[:_pick(rng, len(blob))],
                           lambda: blob + blob[_pick(rng, len(blob)):]])()
        return _with_section(manifest, payload, "exported", blob)
    if how == 8:  # another model's exported function with this manifest
        om, op = _artifact_parts(other)
        e = om["sections"]["exported"]
        return _with_section(manifest, payload, "exported", op[e["offset"]:e["offset"] + e["length"]])
    # a section renamed, dropped, or moved out of bounds
    edited = json.loads(json.dumps(manifest))
    name = rng.choice(sorted(secs))
    choice = rng.randrange(3)
    if choice == 0:
        edited["sections"][name + "x"] = edited["sections"].pop(name)
    elif choice == 1:
        del edited["sections"][name]
    else:
        edited["sections"][name]["length"] += rng.choice((-1, 1, 10 ** 6))
    return _rehashed(edited, payload)


# -- ONNX ----------------------------------------------------------------------------------

def _external(t, location: str, offset: int, length: int) -> None:
    from onnx import TensorProto
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


def onnx_seed_model(folder: str) -> tuple[str, str]:
    """Write ``nested.onnx`` and its data file ``nested.data`` to ``folder``: external data in
    an initializer, a sparse initializer, Constant nodes in both branches of an If, a
    function and a training_info graph. Returns the model file's name and the data file's."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    blobs, tensors = [], []

    def tensor(name, values):
        t = numpy_helper.from_array(np.asarray(values, np.float32), name)
        offset = sum(len(b) for b in blobs)
        blobs.append(t.raw_data)
        _external(t, "nested.data", offset, len(t.raw_data))
        t.ClearField("raw_data")
        tensors.append(t)
        return t

    w = tensor("w", [[1, 2], [3, 4]])
    branch = lambda name, v: helper.make_graph(  # noqa: E731
        [helper.make_node("Constant", [], [name], value=tensor(name + "_t", v))], name,
        [], [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])])
    sparse = helper.make_sparse_tensor(tensor("sv", [5, 6]),
                                       numpy_helper.from_array(np.asarray([0, 3], np.int64), "si"),
                                       [2, 2])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Add", ["y", "sv"], ["y2"]),
             helper.make_node("If", ["c"], ["z"], then_branch=branch("then", [1, 2]),
                              else_branch=branch("else", [3, 4])),
             helper.make_node("Twice", ["z"], ["out"], domain="local")]
    graph = helper.make_graph(
        nodes, "nested",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y2", TensorProto.FLOAT, [2, 2]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
        initializer=[w], sparse_initializer=[sparse])
    fn = helper.make_function(
        "local", "Twice", ["a"], ["b"],
        [helper.make_node("Constant", [], ["k"], value=tensor("k_t", [2, 2])),
         helper.make_node("Mul", ["a", "k"], ["b"])],
        [helper.make_opsetid("", 17)])
    model = helper.make_model(graph, functions=[fn], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    train = model.training_info.add()
    train.initialization.CopyFrom(helper.make_graph([], "init", [], [], initializer=[
        tensor("t_init", [7, 8, 9])]))
    train.algorithm.CopyFrom(helper.make_graph([], "algo", [], [], initializer=[
        tensor("t_algo", [1])]))
    with open(os.path.join(folder, "nested.data"), "wb") as f:
        f.write(b"".join(blobs))
    with open(os.path.join(folder, "nested.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    return "nested.onnx", "nested.data"


def onnx_folder(root: str) -> dict:
    """A model folder with traps, next to a secret file outside it; returns the layout:
    ``folder``, ``models`` (name -> bytes) and ``locations`` to try in external data."""
    import nnxc
    from flax import nnx
    folder = os.path.join(root, "model")
    os.makedirs(os.path.join(folder, "sub"), exist_ok=True)
    secret = os.path.join(root, "secret.bin")
    with open(secret, "wb") as f:
        f.write(SECRET * 64)
    nnxc.export_onnx(nnxc.trace(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), "f32[B,3]"),
                     os.path.join(folder, "lin.onnx"), external_data=True)
    nested, nested_data = onnx_seed_model(folder)
    with open(os.path.join(folder, "sub", "inner.data"), "wb") as f:
        f.write(open(os.path.join(folder, nested_data), "rb").read())
    traps = {"link.data": lambda p: os.symlink(secret, p),
             "dirlink": lambda p: os.symlink(root, p),
             "hard.data": lambda p: os.link(secret, p),
             "fifo.data": lambda p: os.mkfifo(p),
             "folder.data": lambda p: os.mkdir(p)}
    for name, make in traps.items():
        with contextlib.suppress(FileExistsError):
            make(os.path.join(folder, name))
    data_files = sorted(f for f in os.listdir(folder) if f.endswith(".data"))
    models = {}
    for name in ("lin.onnx", nested):
        with open(os.path.join(folder, name), "rb") as f:
            models[name] = f.read()
    locations = data_files + ["sub/inner.data", "./" + nested_data, "sub//inner.data",
                              "dirlink/secret.bin", "../secret.bin", secret, "sub/../" + nested_data,
                              "sub\\inner.data", "..\\secret.bin", "", ".", "sub", "nope.data",
                              "a\0b", "\u00e9.data", "x" * 5000, "/" + nested_data, "C:/x",
                              "file:///etc/passwd", "sub/./inner.data", "~/x"]
    return {"folder": folder, "models": models, "locations": locations, "secret": secret}


_NUMBERS = ["-1", "0", "1", "4", "8", "16", "17", "1e3", " 4", "+4", "1_0", "", "abc", "0x10",
            "99999999999999999999", "-99999999999999999999", "\u0664", "4 ", "1.0"]


def _onnx_places(model):
    """Every TensorProto the loader may read (the reader under test has its own list)."""
    out = []

    def graph(g):
        out.extend(g.initializer)
        for s in g.sparse_initializer:
            out.extend([s.values, s.indices])
        for n in g.node:
            node(n)

    def node(n):
        attributes(n.attribute)

    def attributes(attrs):
        for a in attrs:
            if a.HasField("t"):
                out.append(a.t)
            out.extend(a.tensors)
            for s in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors):
                out.extend([s.values, s.indices])
            if a.HasField("g"):
                graph(a.g)
            for sub in a.graphs:
                graph(sub)
    graph(model.graph)
    for f in model.functions:
        attributes(f.attribute_proto)
        for n in f.node:
            node(n)
    for ti in model.training_info:
        graph(ti.initialization)
        graph(ti.algorithm)
    return out


def mutate_onnx(rng, data: bytes, layout: dict) -> bytes:
    import onnx
    if rng.random() < 0.25:  # raw protobuf bytes
        return rng.choice([lambda: _flip_bytes(rng, data, rng.choice((1, 2, 8))),
                           lambda: data[:_pick(rng, len(data))],
                           lambda: data + data[_pick(rng, len(data)):],
                           lambda: data[:(i := _pick(rng, len(data)))] + data[i + 1:]])()
    model = onnx.ModelProto()
    model.ParseFromString(data)
    tensors = [t for t in _onnx_places(model) if t.external_data] or _onnx_places(model)
    for _ in range(rng.choice((1, 1, 2, 3))):
        t = rng.choice(tensors)
        how = rng.randrange(7)
        entries = list(t.external_data)
        if how <= 2 and entries:  # a location, offset or length
            e = rng.choice([x for x in entries if x.key == ("location", "offset", "length")[how]]
                           or entries)
            e.value = (rng.choice(layout["locations"]) if e.key == "location"
                       else rng.choice(_NUMBERS + [str(int(e.value or 0) + rng.choice((-1, 1, 4)))
                                                   if re.fullmatch(r"\d+", e.value or "") else "0"]))
        elif how == 3:  # dims
            if t.dims:
                t.dims[_pick(rng, len(t.dims))] = rng.choice((0, -1, 3, 2 ** 40, 2 ** 62))
            else:
                t.dims.append(rng.choice((0, 1, 5)))
        elif how == 4:  # data type
            t.data_type = rng.choice((0, 1, 2, 7, 8, 10, 11, 16, 21, 23, 99))
        elif how == 5 and entries:  # an entry duplicated or removed
            if rng.random() < 0.5:
                e = t.external_data.add()
                e.key, e.value = rng.choice(entries).key, rng.choice(layout["locations"] + _NUMBERS)
            else:
                del t.external_data[_pick(rng, len(entries))]
        else:  # external data on a tensor that had its own, or inline data too
            if rng.random() < 0.5:
                _external(t, rng.choice(layout["locations"]), rng.choice((0, 4, 8)),
                          rng.choice((4, 8, 16)))
            else:
                t.raw_data = b"\0" * rng.choice((0, 4, 16))
    out = model.SerializeToString()
    return _flip_bytes(rng, out, 1) if rng.random() < 0.1 else out


# -- the readers and their oracles ---------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    reader: str
    index: int
    kind: str  # accepted, refused, escaped, wrong, hang, crash
    error: str = ""  # the exception type (refused / escaped / wrong)
    message: str = ""


class Wrong(Exception):
    """An accepted input that gives a wrong answer (the oracle's own check failed)."""


class Fixture:
    """The real files the mutations start from, made once per process in ``root``."""

    def __init__(self, root: str):
        import nnxc
        self.root = root
        self.ir_texts = []
        for name in sorted(os.listdir(GOLDEN_IR)):
            if name.endswith(".ir"):
                with open(os.path.join(GOLDEN_IR, name)) as f:
                    self.ir_texts.append(f.read())
        self.ir_texts.append(_EXTRA_IR)
        self.json_texts = [nnxc.ir.to_json(nnxc.ir.parse(t), indent=None) for t in self.ir_texts]
        golden = os.path.join(GOLDEN_ARTIFACTS, "tiny_v1.nnxc")
        with open(golden, "rb") as f:
            self.artifact = f.read()
        self.artifact_inputs = [self._npy("tiny_v1.in.x.npy")]
        other = os.path.join(root, "other.nnxc")
        nnxc.save(nnxc.ir.parse(_OTHER_IR, sidecar={}), other, state={})
        with open(other, "rb") as f:
            self.other_artifact = f.read()
        self.onnx = onnx_folder(root)

    @staticmethod
    def _npy(name):
        import numpy as np
        return np.load(os.path.join(GOLDEN_ARTIFACTS, name), allow_pickle=False)



_OTHER_IR = """graph @Other(%a: f32[2], %b: i32[B]) {
  %0: f32[2] = sin(%a)
  return {"s": %0, "b": [%b]}
}
"""

# what the golden IR files lack: constants, complex and bool values, while and cond, metadata
# and attributes of every kind, a structured return
_EXTRA_IR = """graph @Extra(%x: f32[B,4], %i: i32[], %k: key<fry>[]) {
  var %w: f32[4] Param {sharding=("data",None), tag="w\\n\\"q\\"", n=-3, f=1e-05, d=f32, e=Precision.HIGHEST}
  const %c0: f32[2,2] = dense<[1.0,-2.5,inf,nan]>
  const %c1: c64[1] = dense<[(1.0,-0.5)]>
  const %c2: bool[2] = dense<[True,False]>
  %0: f32[B,4] = mul(%x, %x) @blocks.0 loc("model.py:12")
  %1: f32[B,4] = add(%0, 0.5:f32)
  %2: f32[B,4] = cond(%i, %1) {
  ^(%3: f32[B,4]):
    %4: f32[B,4] = sin(%3)
    yield %4
  } {
  ^(%5: f32[B,4]):
    yield %5
  }
  %6: i32[] = while(%i) {cond_nconsts=0, body_nconsts=0} {
  ^(%7: i32[]):
    %8: bool[] = lt(%7, 10:i32)
    yield %8
  } {
  ^(%9: i32[]):
    %10: i32[] = add(%9, 1:i32)
    yield %10
  }
  %11: f32[2,B*4] = reshape(%2) {new_sizes=(2,dim(B*2)), dimensions=None}
  update %w = %w
  return {"a": %2, "b": (%6,), "c": [%11, %c0]}
}
"""


def check_parse(fx: Fixture, text: str) -> None:
    import nnxc
    g = nnxc.ir.parse(text)
    printed = nnxc.ir.print_graph(g)
    try:
        again = nnxc.ir.print_graph(nnxc.ir.parse(printed))
    except nnxc.NnxcError as e:
        raise Wrong(f"the text of a parsed graph does not parse: {type(e).__name__}: {e}") from None
    if again != printed:
        raise Wrong("the text of a parsed graph prints back differently")
    try:
        nnxc.ir.verify(g)
    except nnxc.NnxcError:
        pass


def check_from_json(fx: Fixture, text: str) -> None:
    import nnxc
    g = nnxc.ir.from_json(text)
    try:
        nnxc.ir.verify(g, check_types=False)
        printed = nnxc.ir.print_graph(g)
        again = nnxc.ir.print_graph(nnxc.ir.parse(printed))
    except nnxc.NnxcError as e:
        raise Wrong(f"from_json accepted a graph that does not round trip: "
                    f"{type(e).__name__}: {e}") from None
    if again != printed:
        raise Wrong("from_json accepted a graph whose text prints back differently")
    try:
        nnxc.ir.verify(g)  # the op types: a VerifyError is a clear answer
    except nnxc.NnxcError:
        pass


def check_load(fx: Fixture, data: bytes) -> None:
    import nnxc
    path = os.path.join(fx.root, "fuzz.nnxc")
    with open(path, "wb") as f:
        f.write(data)
    try:
        art = nnxc.load(path)
    except nnxc.NnxcError as e:
        if _CATCH_ALL.search(str(e)):  # an nnxc error, but no check named the problem
            raise Wrong(f"refused by load's catch-all, not by a check: {e}") from None
        raise
    try:
        art(*fx.artifact_inputs)
        art.apply(art.state, *fx.artifact_inputs)
    except nnxc.NnxcError:
        pass


_CATCH_ALL = re.compile(r"malformed manifest \((KeyError|TypeError|ValueError|IndexError)")


def check_load_onnx(fx: Fixture, data: bytes) -> None:
    from nnxc.runtime.onnx_io import load_onnx
    path = os.path.join(fx.onnx["folder"], "fuzz.onnx")
    with open(path, "wb") as f:
        f.write(data)
    model = load_onnx(path)
    for t in _onnx_places(model):
        if SECRET[:12] in t.raw_data or any(SECRET[:12] in s for s in t.string_data):
            raise Wrong(f"tensor {t.name!r} holds bytes of a file outside the model folder")


CHECKS = {"parse": check_parse, "from_json": check_from_json, "load": check_load,
          "load_onnx": check_load_onnx}


def make_input(fx: Fixture, reader: str, seed: int, index: int):
    """Input ``index`` of ``reader``'s campaign ``seed``: a function of these three only."""
    rng = random.Random(f"{seed}:{reader}:{index}")
    if reader == "parse":
        if rng.random() < 0.03:
            return nested_regions(rng.choice((50, 300, 2000)))
        return mutate_text(rng, rng.choice(fx.ir_texts))
    if reader == "from_json":
        return mutate_json(rng, rng.choice(fx.json_texts))
    if reader == "load":
        return mutate_artifact(rng, fx.artifact, fx.other_artifact)
    name = rng.choice(sorted(fx.onnx["models"]))
    return mutate_onnx(rng, fx.onnx["models"][name], fx.onnx)


def run_input(fx: Fixture, reader: str, seed: int, index: int, timeout: int) -> Outcome:
    import nnxc
    data = make_input(fx, reader, seed, index)
    try:
        with time_limit(timeout):
            CHECKS[reader](fx, data)
    except InputTimeout:
        return Outcome(reader, index, "hang", "InputTimeout", f"no answer within {timeout} s")
    except Wrong as e:
        return Outcome(reader, index, "wrong", "Wrong", str(e)[:500])
    except nnxc.NnxcError as e:
        return Outcome(reader, index, "refused", type(e).__name__, str(e)[:300])
    except BaseException as e:  # noqa: BLE001 - what the campaign counts
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = traceback.format_exc(limit=-4)
        return Outcome(reader, index, "escaped", type(e).__name__, f"{e!s:.300}\n{tb}")
    return Outcome(reader, index, "accepted")


def run_cases(reader: str, count: int, seed: int = 0, timeout: int = 60,
              root: str | None = None, start: int = 0) -> list[Outcome]:
    """Run inputs ``start .. start+count-1`` of ``reader`` in this process."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="nnxc-fuzz-"))
        fx = Fixture(root)
        return [run_input(fx, reader, seed, i, timeout) for i in range(start, start + count)]


# -- the campaign: worker processes, crash and hang accounting ----------------------------

def _worker(conn, reader: str, seed: int, timeout: int, start: int, stop: int) -> None:
    import warnings
    warnings.simplefilter("ignore")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    with tempfile.TemporaryDirectory(prefix="nnxc-fuzz-") as root:
        fx = Fixture(root)
        for i in range(start, stop):
            conn.send(("start", i))
            conn.send(("done", dataclasses.asdict(run_input(fx, reader, seed, i, timeout))))
            if i % 200 == 199:
                import jax
                jax.clear_caches()
    conn.send(("end", None))


def campaign(reader: str, count: int, seed: int, timeout: int, on_outcome) -> None:
    """Inputs 0 .. count-1 of ``reader``, in worker processes; a worker that dies (a crash)
    or stops answering (a hang in native code) is replaced and the campaign goes on."""
    ctx = mp.get_context("spawn")
    start = 0
    while start < count:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, reader, seed, timeout, start, count),
                           daemon=True)
        proc.start()
        child.close()
        current, deadline = None, None
        while True:
            if not parent.poll(timeout=5):
                if current is not None and time.monotonic() > deadline:
                    os.kill(proc.pid, signal.SIGKILL)  # our own child, by its pid
                    proc.join()
                    on_outcome(Outcome(reader, current, "hang", "Killed",
                                       f"no answer within {3 * timeout + 60} s (worker killed)"))
                    start = current + 1
                    break
                if proc.is_alive():
                    continue
            try:
                kind, value = parent.recv()
            except (EOFError, OSError):
                proc.join()
                if current is None:  # died while setting up: nothing to blame an input for
                    raise RuntimeError(f"the {reader} worker died before its first input "
                                       f"(exit code {proc.exitcode})") from None
                on_outcome(Outcome(reader, current, "crash", f"exit {proc.exitcode}",
                                   "the worker process died on this input"))
                start = current + 1
                break
            if kind == "start":
                current, deadline = value, time.monotonic() + 3 * timeout + 60
            elif kind == "done":
                on_outcome(Outcome(**value))
                current = None
            else:
                proc.join()
                start = count
                break
        parent.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000, help="inputs per reader")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--readers", default=",".join(READERS))
    ap.add_argument("--timeout", type=int, default=60, help="seconds per input")
    ap.add_argument("--only", help="rerun one input in this process: READER:INDEX")
    ap.add_argument("--show", type=int, default=5, help="failures printed per reader")
    args = ap.parse_args(argv)
    if args.only:
        reader, index = args.only.split(":")
        (o,) = run_cases(reader, 1, args.seed, args.timeout, start=int(index))
        print(f"{reader}:{index}: {o.kind} {o.error}\n{o.message}")
        return 0 if o.kind in ("accepted", "refused") else 1
    readers = [r for r in args.readers.split(",") if r]
    bad = 0
    for reader in readers:
        counts, refused, failures = collections.Counter(), collections.Counter(), []

        def record(o: Outcome):
            counts[o.kind] += 1
            if o.kind == "refused":
                refused[o.error] += 1
            elif o.kind != "accepted":
                failures.append(o)
        campaign(reader, args.count, args.seed, args.timeout, record)
        escaped = collections.Counter(o.error for o in failures if o.kind == "escaped")
        print(f"{reader}: {sum(counts.values())} inputs, {counts['accepted']} accepted, "
              f"{counts['refused']} refused, {counts['escaped']} escaped, "
              f"{counts['wrong']} wrong answers, {counts['hang']} hangs, "
              f"{counts['crash']} crashes")
        print("  refused by: " + ", ".join(f"{k} {v}" for k, v in refused.most_common()))
        if escaped:
            print("  escaped: " + ", ".join(f"{k} {v}" for k, v in escaped.most_common()))
        for o in failures[:args.show]:
            print(f"  - {reader}:{o.index} {o.kind} {o.error}: "
                  + o.message.strip().replace("\n", "\n      "))
        bad += len(failures)
        sys.stdout.flush()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
