"""Run the per-row LoRA Triton kernels under Triton's CPU interpreter and print a JSON report.

tests/core/test_kernels.py runs this file in a fresh process with TRITON_INTERPRET=1: triton picks
the interpreter when a kernel is decorated (triton.jit reads knobs.runtime.interpret), so the
variable must be set before triton and hywu_core.kernels.triton_lora are imported, which only a new
process guarantees. The report holds, per case of CASES, the kernel's error against an fp64 truth
computed from the same (rounded) inputs, the torch reference's error in the same units, and the
kernel launches counted; then the errors of mutants, copies of the real kernel source with one
deliberate bug, which must fail (proof that the interpreter executed the kernel bodies).

Two interpreter gaps are closed before the kernels are imported, so that they run with the GPU's
semantics (triton's interpreter stores bfloat16 as uint16 and "does not support operations on
bfloat16", triton-lang/triton#11584):
- tl.dot on bfloat16 operands multiplies the raw bit patterns; on the GPU bf16 products are exact in
  the fp32 accumulator, so the operands are widened to fp32 (exact) first;
- fp32 -> bf16 casts truncate; triton's default downcast rounding on the GPU is round-to-nearest-even
  (language/semantic.py cast()), so that cast is done by torch, which rounds to nearest even.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

N_ITEMS = 3
ROWS = (2, 0, 2, 1, 0)   # unsorted, item 0 and item 2 used twice
SHAPE = (200, 150)       # (d_in, d_out): more than one K tile and N tile, the last of each ragged
SHAPES = (
    (17, 33),            # odd, both below one tile
    (64, 64),            # powers of two: one whole K tile at rank 128 (BLOCK_K 64), half of one at rank 4
    (128, 256),          # d_out > d_in, whole K and N tiles (two N tiles, four at rank 128)
    (300, 40),           # d_in over three K tiles (five at rank 128), the last ragged; d_out below one N tile
)
DTYPES = ("float32", "float16", "bfloat16")
SCALE = 0.5
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}   # max |y - truth| / max |truth|


def _case(dtype: str, rank: int, tokens: tuple[int, ...], add: bool = False, split_k: int | None = None,
          strided: bool = False, shape: tuple[int, int] = SHAPE, rows: tuple[int, ...] = ROWS) -> dict:
    """One kernel call: x (len(rows), *tokens, d_in) -- tokens () is a 2-D x, one token per row --
    through a stack of N_ITEMS LoRAs of this rank; the id names shape and rows when not the defaults."""
    tag = f"-t{'x'.join(map(str, tokens))}" if tokens else "-2d"
    extra = ("-add" if add else "") + (f"-splitk{split_k}" if split_k else "") + ("-strided" if strided else "")
    extra += (f"-{shape[0]}x{shape[1]}" if shape != SHAPE else "") + (f"-R{len(rows)}" if rows != ROWS else "")
    return {"id": f"{dtype}-r{rank}{tag}{extra}", "dtype": dtype, "rank": rank, "tokens": list(tokens),
            "add": add, "split_k": split_k, "strided": strided, "d_in": shape[0], "d_out": shape[1],
            "rows": list(rows)}


CASES = (
    [_case(dtype, rank, tokens) for dtype in DTYPES for rank in (4, 16, 128) for tokens in ((1,), (37,))]
    + [_case(dtype, 16, (37,), add=True) for dtype in DTYPES]
    + [_case("float32", 16, (70,)), _case("bfloat16", 16, (70,)),          # two token blocks
       _case("float32", 16, (1,), split_k=3), _case("bfloat16", 4, (1,), split_k=2),
       _case("float16", 16, (3, 5)),                                       # x (R, 3, 5, d_in)
       _case("bfloat16", 16, (37,), strided=True)]                         # factors are expert slices
    # other widths, at both ends of the rank range
    + [_case(dtype, rank, tokens, shape=shape) for shape in SHAPES for dtype in DTYPES for rank in (4, 128)
       for tokens in ((1,), (37,))]
    # one batch row of one token, x (1, d_in): at 300 wide the shrink splits d_in over 5 programs itself
    + [_case(dtype, rank, (), shape=shape, rows=(1,)) for dtype in DTYPES
       for rank, shape in ((4, (17, 33)), (128, (300, 40)))]
    + [_case("float32", 16, (1,), split_k=2, shape=(300, 40)),              # each split runs the K loop twice
       _case("bfloat16", 128, (37,), add=True, shape=(128, 256)),
       _case("float16", 4, (37,), strided=True, shape=(17, 33))]
)
MUTANT_CASE = "float32-r16-t37"


def _patch_interpreter():
    import numpy as np
    import torch
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    create_dot, cast_impl = builder.create_dot, builder.cast_impl

    def widen(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    def cast(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            values = torch.from_numpy(np.array(src.data, dtype=np.float32)).to(torch.bfloat16)
            return interpreter.TensorHandle(values.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return cast_impl(self, src, dst_type)

    builder.create_dot, builder.cast_impl = dot, cast


def _inputs(case: dict, torch):
    dtype = getattr(torch, case["dtype"])
    rank, d_in, d_out, R = case["rank"], case["d_in"], case["d_out"], len(case["rows"])
    g = torch.Generator().manual_seed(zlib.crc32(case["id"].encode()))
    x = torch.randn(R, *case["tokens"], d_in, generator=g).to(dtype)
    if case["strided"]:
        A = (torch.randn(N_ITEMS, 2, rank, d_in, generator=g) / d_in ** 0.5).to(dtype)[:, 1]
        B = torch.randn(N_ITEMS, 2, d_out, rank, generator=g).to(dtype)[:, 0]
        assert not A.is_contiguous() and not B.is_contiguous()
    else:
        A = (torch.randn(N_ITEMS, rank, d_in, generator=g) / d_in ** 0.5).to(dtype)
        B = torch.randn(N_ITEMS, d_out, rank, generator=g).to(dtype)
    out0 = torch.randn(R, *case["tokens"], d_out, generator=g).to(dtype) if case["add"] else None
    return x, A, B, torch.tensor(case["rows"]), out0


def _truth(x, A, B, rows, out0, torch):
    """fp64 result from the inputs as rounded to their dtype, computed without the reference code."""
    xs = x.double().reshape(x.shape[0], -1, x.shape[-1])
    delta = torch.einsum("rtk,rqk,roq->rto", xs, A.double()[rows], B.double()[rows]) * SCALE
    delta = delta.reshape(*x.shape[:-1], B.shape[1])
    return delta if out0 is None else out0.double() + delta


def run_case(case: dict, triton_lora, reference, torch) -> dict:
    x, A, B, rows, out0 = _inputs(case, torch)
    truth = _truth(x, A, B, rows, out0, torch)
    start = time.perf_counter()
    if case["split_k"]:
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])
        h = triton_lora.shrink(x3, A, rows, split_k=case["split_k"])
        y = torch.empty(*x.shape[:-1], case["d_out"], dtype=x.dtype)
        triton_lora.expand(h, B, rows, y.view(x.shape[0], -1, case["d_out"]), SCALE, add=False)
    elif case["add"]:
        y = out0.clone()
        returned = triton_lora.per_row_lora_triton(x, A, B, rows, SCALE, out=y)
        assert returned.data_ptr() == y.data_ptr(), "the add variant must write into out"
    else:
        y = triton_lora.per_row_lora_triton(x, A, B, rows, SCALE)
    seconds = time.perf_counter() - start
    ref = reference(x, A, B, rows, SCALE)
    if out0 is not None:
        ref = out0 + ref
    peak = truth.abs().max().item()
    return {"dtype": str(y.dtype), "shape": list(y.shape), "error": (y.double() - truth).abs().max().item() / peak,
            "reference_error": (ref.double() - truth).abs().max().item() / peak, "seconds": seconds}


def _mutant(triton_lora, name: str, old: str, new: str, folder: Path):
    """The kernel `name` rebuilt from its real source with `old` replaced by `new`."""
    source = textwrap.dedent(inspect.getsource(getattr(triton_lora, name).fn))
    assert source.count(old) == 1, f"mutation target {old!r} not found once in {name}"
    path = folder / f"mutant_{name}.py"
    path.write_text("import triton\nimport triton.language as tl\n\n\n" + source.replace(old, new))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


MUTATIONS = {
    "shrink_routes_every_row_to_rows0": ("_shrink_kernel", "tl.load(rows_ptr + row)", "tl.load(rows_ptr + 0)"),
    "expand_drops_scale": ("_expand_kernel", "input_precision=PRECISION) * scale", "input_precision=PRECISION)"),
}


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1" or "triton" in sys.modules:
        sys.exit("run with TRITON_INTERPRET=1 in a fresh process, before triton is imported")
    import torch

    _patch_interpreter()
    from triton.runtime.interpreter import InterpretedFunction

    from hywu_core.kernels import triton_lora
    from hywu_core.kernels.reference import per_row_lora_reference

    kernels = {name: getattr(triton_lora, name) for name in ("_shrink_kernel", "_expand_kernel")}
    launches = {name: 0 for name in kernels}
    run = InterpretedFunction.run

    def counted(self, *args, **kwargs):
        if self.fn.__name__ in launches:
            launches[self.fn.__name__] += 1
        return run(self, *args, **kwargs)

    InterpretedFunction.run = counted
    report = {"interpreted": {name: isinstance(k, InterpretedFunction) for name, k in kernels.items()},
              "cases": {}, "mutants": {}}
    for case in CASES:
        before = dict(launches)
        result = run_case(case, triton_lora, per_row_lora_reference, torch)
        result["launches"] = {name: launches[name] - before[name] for name in launches}
        report["cases"][case["id"]] = result
    mutant_case = next(c for c in CASES if c["id"] == MUTANT_CASE)
    with tempfile.TemporaryDirectory() as folder:
        for label, (name, old, new) in MUTATIONS.items():
            original = getattr(triton_lora, name)
            setattr(triton_lora, name, _mutant(triton_lora, name, old, new, Path(folder)))
            try:
                report["mutants"][label] = run_case(mutant_case, triton_lora, per_row_lora_reference, torch)["error"]
            finally:
                setattr(triton_lora, name, original)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
