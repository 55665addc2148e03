"""bench/static_gpu.py and its counter bench/sass_cfg.py: the CFG / loop / trip-count rules on
small synthetic SASS listings (always), then the real kernels when nvcc and Triton are here
(compiles are cached in the temp folder, so a second run takes seconds)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import sass_cfg as sc  # noqa: E402


def listing(*items: str, name: str = "k") -> str:
    """An nvdisasm-style listing of one kernel: items are "label:", "#file:line" (a source
    location for the next instructions; "#a:1<b:2" = a:1 inlined at b:2) or instructions."""
    out = [f'\t.section\t.text.{name},"ax",@progbits', f"        .type           {name},@function", f"{name}:"]
    addr = 0
    for it in items:
        if it.endswith(":"):
            out.append(it)
        elif it.startswith("#"):
            frames = it[1:].split("<")
            for i, fr in enumerate(frames):
                f, ln = fr.split(":")
                tail = f' inlined at "/src/{frames[i + 1].split(":")[0]}", line {frames[i + 1].split(":")[1]}' \
                    if i + 1 < len(frames) else ""
                out.append(f'\t//## File "/src/{f}", line {ln}{tail}')
        else:
            out.append(f"        /*{addr:04x}*/                   {it} ;")
            addr += 16
    return "\n".join(out) + "\n"


def count(text, trips=(), env=None, cold=(), known=None, name="k"):
    return sc.count_function(sc.parse_sass(text), name, list(trips), env or {}, list(cold), known)


def body(n: int) -> list:
    return [f"IADD3 R{i % 8 + 10}, R1, 0x1, RZ" for i in range(n)]


def test_straight_line_counts_every_instruction_to_the_exit():
    text = listing("#k.cu:1", *body(5), "EXIT", ".L_x_9:", "BRA `(.L_x_9)", "NOP")
    c = count(text)
    assert c.total == 6  # the padding after EXIT is unreachable
    assert c.loops == []


def test_loop_of_known_trips_multiplies_its_body():
    text = listing("#k.cu:10", "MOV R0, RZ", ".L_x_1:", "#k.cu:11", *body(2),
                   "ISETP.GE.AND P0, PT, R0, 0x8, PT", "@!P0 BRA `(.L_x_1)", "#k.cu:12", "EXIT")
    c = count(text, [sc.TripRule("k.cu:11", "N", "n iterations")], {"N": 8})
    assert c.total == 1 + 8 * 4 + 1
    (lp,) = c.loops
    assert (lp.key, lp.trips, lp.iter_cost) == ("k.cu:11", 8, 4)
    assert count(text, [sc.TripRule("k.cu:11", "2 * N", "twice")], {"N": 8}).total == 1 + 16 * 4 + 1


def test_nested_loops_multiply_trip_counts():
    text = listing("#k.cu:1", "MOV R0, RZ",
                   ".L_x_1:", "#k.cu:2", "MOV R2, RZ", "MOV R3, RZ",
                   ".L_x_2:", "#k.cu:3", *body(2), "@!P1 BRA `(.L_x_2)",
                   "#k.cu:2", "IADD3 R0, R0, 0x1, RZ", "@!P0 BRA `(.L_x_1)",
                   "#k.cu:4", "EXIT")
    trips = [sc.TripRule("k.cu:2", "3", "outer"), sc.TripRule("k.cu:3", "4", "inner")]
    with pytest.raises(sc.CountError, match=r"loop at .*k\.cu:3.*; loop at .*k\.cu:2"):  # every unmapped loop
        count(text, [])
    c = count(text, trips)
    inner, outer = c.loops
    assert inner.parent is outer and outer.parent is None
    assert inner.cost == 4 * 3
    assert outer.iter_cost == 2 + 12 + 2
    assert c.total == 1 + 3 * (2 + 4 * 3 + 2) + 1


def test_branch_takes_the_longer_side_once():
    text = listing("#k.cu:1", "ISETP.GT.AND P0, PT, R1, 0x2, PT", "@P0 BRA `(.L_x_else)",
                   *body(5), "BRA `(.L_x_join)", ".L_x_else:", *body(2), ".L_x_join:", "EXIT")
    c = count(text)
    assert c.total == 2 + 5 + 1 + 1  # compare + branch, the 5-side and its jump, EXIT


def test_branch_inside_a_loop_counts_the_longer_side_per_iteration():
    text = listing("#k.cu:1", "MOV R0, RZ", ".L_x_1:", "#k.cu:2", "@P1 BRA `(.L_x_s)", *body(7), ".L_x_s:",
                   "IADD3 R0, R0, 0x1, RZ", "@!P0 BRA `(.L_x_1)", "EXIT")
    c = count(text, [sc.TripRule("k.cu:2", "10", "ten")])
    assert c.total == 1 + 10 * (1 + 7 + 2) + 1


def test_unmapped_loop_is_an_error_naming_its_lines():
    text = listing("#k.cu:10", "MOV R0, RZ", ".L_x_1:", "#k.cu:11", *body(2), "@!P0 BRA `(.L_x_1)", "EXIT")
    with pytest.raises(sc.CountError, match=r"not in the trip table: loop at .*k\.cu:11"):
        count(text, [sc.TripRule("k.cu:99", "4", "another loop")])


def test_loop_is_found_through_an_inline_frame():
    text = listing("#k.cu:10", "MOV R0, RZ", ".L_x_1:", "#lib.h:5<k.cu:11", *body(2), "@!P0 BRA `(.L_x_1)", "EXIT")
    assert count(text, [sc.TripRule("k.cu:11", "4", "caller's line")]).total == 1 + 4 * 3 + 1
    # the innermost frame wins when both are in the table
    both = [sc.TripRule("k.cu:11", "4", "caller"), sc.TripRule("lib.h:5", "2", "callee")]
    assert count(text, both).total == 1 + 2 * 3 + 1


def test_irreducible_flow_is_an_error():
    text = listing("#k.cu:1", "@P0 BRA `(.L_x_b)", ".L_x_a:", "NOP", "@P1 BRA `(.L_x_b)", "EXIT",
                   ".L_x_b:", "NOP", "@P2 BRA `(.L_x_a)", "EXIT")
    with pytest.raises(sc.CountError, match="irreducible"):
        count(text)


def _with_call(cold):
    text = listing("#k.cu:1", "FCHK P0, R1, R2", "@!P0 BRA `(.L_x_fast)", "MOV R3, 0x40",
                   "CALL.REL.NOINC `($__internal_0_$__slowpath)", ".L_x_fast:", *body(3), "EXIT")
    text += ("        .type           $__internal_0_$__slowpath,@function\n$__internal_0_$__slowpath:\n"
             + "\n".join(f"        /*{0x400 + 16 * i:04x}*/                   NOP ;" for i in range(20))
             + "\n        /*0600*/                   RET.REL.NODEC R20 `(k) ;\n")
    return count(text, cold=cold)


def test_call_costs_its_callee_unless_marked_cold():
    assert _with_call(()).total == 2 + 2 + 21 + 3 + 1
    c = _with_call([sc.ColdRule("slow path", call="slowpath")])
    assert c.total == 2 + 3 + 1
    assert c.cold == [("slow path", 1, 2)]


def test_cold_lines_drop_blocks_and_an_all_cold_path_is_an_error():
    text = listing("#k.cu:1", "@P0 BRA `(.L_x_b)", "#k.cu:7", *body(9), "BRA `(.L_x_j)", ".L_x_b:", "#k.cu:2",
                   *body(2), ".L_x_j:", "#k.cu:3", "EXIT")
    assert count(text).total == 1 + 10 + 1
    assert count(text, cold=[sc.ColdRule("other case", lines="k.cu:5-8")]).total == 1 + 2 + 1
    with pytest.raises(sc.CountError, match="cold"):
        count(text, cold=[sc.ColdRule("everything", lines="k.cu:1-3")])


def test_known_parameter_resolves_an_unrolled_guard():
    # the CMAX-unrolled pattern: classes past C skip their block
    items = ["#k.cu:1", "LDC R7, c[0x0][0x228]", "ISETP.GE.AND P5, PT, R7, 0x2, PT", "ISETP.GE.AND P4, PT, R7, 0x3, PT"]
    for k, p in ((1, "P5"), (2, "P4")):
        items += [f"@!{p} BRA `(.L_x_{k})", *body(10), f".L_x_{k}:"]
    text = listing(*items, "EXIT")
    assert count(text).total == 3 + 2 * 11 + 1  # unknown C: longest path runs both
    assert count(text, known={0x228: 2}).total == 3 + 11 + 1 + 1
    assert count(text, known={0x228: 3}).total == 3 + 2 * 11 + 1
    c = count(text, known={0x228: 1})
    assert c.total == 3 + 2 + 1 and c.resolved_branches == 2


def test_known_value_is_lost_when_a_path_overwrites_it():
    text = listing("#k.cu:1", "LDC R7, c[0x0][0x228]", "@P0 BRA `(.L_x_j)", "IADD3 R7, R7, 0x5, RZ", ".L_x_j:",
                   "ISETP.GE.AND P1, PT, R7, 0x4, PT", "@!P1 BRA `(.L_x_e)", *body(6), ".L_x_e:", "EXIT")
    assert count(text, known={0x228: 1}).total == 1 + 1 + 1 + 2 + 6 + 1


def test_occupancy_on_sm90():
    from static_gpu import occupancy

    o = occupancy(90, 72, 7768, 256)
    assert (o["blocks"], o["warps"], o["limiter"]) == (3, 24, "registers")
    o = occupancy(90, 228, 8192, 128)  # 228 regs -> 7296 per warp: 8 warps
    assert (o["blocks"], o["warps"]) == (2, 8)
    o = occupancy(90, 32, 100 * 1024, 128)  # 101 KB a block with the reserve: 2 blocks
    assert (o["blocks"], o["limiter"]) == (2, "shared memory")
    assert occupancy(90, 32, 0, 256)["limiter"] == "threads+registers"  # 1024 regs a warp: 64 warps either way
    assert occupancy(90, 16, 0, 64)["blocks"] == 32  # the block limit
    assert occupancy(90, 32, 228 * 1024, 128)["blocks"] == 0  # over the per-block maximum


def test_table_locations_resolve_by_pattern(tmp_path, monkeypatch):
    import static_gpu as sg

    (tmp_path / "csrc" / "cuda").mkdir(parents=True)
    (tmp_path / "csrc" / "cuda" / "k.cu").write_text("int a;\nfor (int i = 0; i < C; ++i) {\n}\nfor (int i = 0; i < C; ++i) x();\n")
    monkeypatch.setattr(sg, "ROOT", str(tmp_path))
    rules = sg.resolve_trips([sc.TripRule("k.cu:/for \\(int i = 0; i < C/", "C", "x"), sc.TripRule("k.cu:7", "1", "y")])
    assert [r.loc for r in rules] == ["k.cu:2", "k.cu:4", "k.cu:7"]
    (cold,) = sg.resolve_cold([sc.ColdRule("z", lines="k.cu:/int a/-/x\\(\\)/")])
    assert cold.lines == "k.cu:1-4"
    with pytest.raises(sc.CountError, match="no line"):
        sg.resolve_trips([sc.TripRule("k.cu:/this text is nowhere/", "1", "x")])
    with pytest.raises(sc.CountError, match="no such file"):
        sg.resolve_trips([sc.TripRule("nothere.cu:/x/", "1", "x")])


def test_cli_rejects_bad_arguments(tmp_path):
    for args in (["--archs", "70"], ["--archs", "x"], ["--only", "no such kernel"], ["--set", "Q=3"], ["--set", "C=x"]):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "static_gpu.py"), *args],
                              capture_output=True, text=True, cwd=str(tmp_path))
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


# -- the real kernels ----------------------------------------------------------------------------------
# triton is never imported in this process: the interpreter tests need the suite's first import
# of triton to happen with TRITON_INTERPRET=1 (tests/_triton_env.py); the Triton compiles run
# in a child process (bench/static_gpu.py's CLI), the CUDA tools are plain executables.


def _have_tools() -> bool:
    import static_gpu as sg
    from cbda.compile_report import find_nvcc

    return find_nvcc() is not None and sg.triton_bin() is not None


needs_tools = pytest.mark.skipif(not _have_tools(), reason="needs nvcc and triton (nvdisasm, cuobjdump)")
STATIC = os.path.join(ROOT, "bench", "static_gpu.py")


def run_cli(out, *args) -> dict:
    """bench/static_gpu.py in a child process; its JSON report."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, STATIC, *args, "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    with open(f"{out}.json") as f:
        return json.load(f)


TINY = r"""
__global__ void tiny(const float* a, float* out, int n) {
  float acc = 0.f;
#pragma unroll 1
  for (int i = threadIdx.x; i < n; i += 32) {
    acc += a[i] * a[i];
  }
  out[threadIdx.x] = acc;
}
"""


@needs_tools
def test_tiny_real_kernel_counts_scale_with_trips(tmp_path):
    import static_gpu as sg
    from cbda.compile_report import find_nvcc

    src = tmp_path / "tiny.cu"
    src.write_text(TINY)
    cubin = tmp_path / "tiny.cubin"
    subprocess.run([find_nvcc(), "--cubin", "-arch=sm_90", "-O3", "-lineinfo", str(src), "-o", str(cubin)],
                   check=True, capture_output=True)
    text = sg.disassemble(str(cubin))
    funcs = sc.parse_sass(text)
    (name,) = [n for n in funcs if "tiny" in n]
    rule = [sc.TripRule("tiny.cu:5", "N", "n / 32 per lane")]
    c10 = sc.count_function(funcs, name, rule, {"N": 10})
    c20 = sc.count_function(funcs, name, rule, {"N": 20})
    assert c10.total > 10 and len(c10.loops) >= 1
    iters = sum(lp.iter_cost for lp in c10.loops if lp.parent is None)
    assert c20.total - c10.total == pytest.approx(10 * iters)
    with pytest.raises(sc.CountError, match="tiny.cu"):
        sc.count_function(funcs, name, [], {})
    # our blocks and edges are nvdisasm's own (-bbcfg), and a wrong edge would show
    edges = sg.nvdisasm_edges(str(cubin))[name]
    assert sc.cfg_mismatches(funcs[name], edges) == []
    last = funcs[name].instrs[sc.build_cfg(funcs[name]).blocks[0].end - 1].addr  # the entry block's end
    broken = {**edges, last: edges.get(last, set()) | {0x7FF0}}
    assert sc.cfg_mismatches(funcs[name], broken) == [last]
    res = sg.res_usage(str(cubin))
    assert res[name]["regs"] > 0 and res[name]["local"] == 0


@pytest.fixture(scope="module")
def score_report(tmp_path_factory):
    """The four counted score kernels (CUDA and Triton, bf16 and fp32) for sm_90."""
    return run_cli(tmp_path_factory.mktemp("static") / "score", "--archs", "90", "--only", "select,fused")


@needs_tools
def test_score_kernels_are_counted_sanely(score_report):
    assert not score_report["errors"], score_report["errors"]
    rows = {r["kernel"]: r for r in score_report["rows"]}
    assert len(rows) == 4 and {r["backend"] for r in rows.values()} == {"cuda", "triton"}
    for name, r in rows.items():
        assert 0 < r["regs"] <= 255, name
        assert r["spill_stores"] >= 0 and r["spill_loads"] >= 0 and "stl_instructions" in r
        assert r["warps"] > 0 and r["threads"] > 0
        c = r["count"]
        assert c["loops"], name  # every loop got a trip count (unmapped ones raise)
        assert 50 < c["instructions_per_pixel"] < 100_000, name
        assert c["instructions_per_pixel"] == pytest.approx(c["instructions_per_thread"] / c["outputs_per_thread"], rel=1e-3)
        assert c["cfg_check"] == "agrees with nvdisasm -bbcfg", name
        assert sum(e["per_pixel"] for e in c["by_kernel_line"]) <= c["instructions_per_pixel"] * 1.001


@needs_tools
def test_counts_follow_the_class_count(score_report, tmp_path):
    """C enters the count through the trip tables (Triton's class loops) or the resolved
    guards (CUDA's unrolled 32-class loops): fewer classes, fewer instructions."""
    small = run_cli(tmp_path / "c5", "--archs", "90", "--only", "select,fused", "--set", "C=5")
    per19 = {r["kernel"]: r["count"]["instructions_per_thread"] for r in score_report["rows"]}
    per5 = {r["kernel"]: r["count"]["instructions_per_thread"] for r in small["rows"]}
    assert per5.keys() == per19.keys()
    import re

    import static_gpu as sg

    for spec in (s for s in sg.KERNELS if s.name in per19):
        # a CUDA kernel instantiated for one C (no C in its tables) counts that instance
        exprs = [t.expr for t in spec.trips] + [k[1] for k in spec.known]
        if spec.backend == "triton" or any(re.search(r"\bC\b", e) for e in exprs):
            assert per5[spec.name] < 0.8 * per19[spec.name], spec.name
        else:
            assert per5[spec.name] == per19[spec.name], spec.name


@needs_tools
def test_cli_writes_json_and_markdown(tmp_path):
    data = run_cli(tmp_path / "static", "--archs", "90", "--only", "greedy_scan_kernel r=1 global")
    (row,) = data["rows"]
    assert row["arch"] == "sm_90" and row["regs"] > 0 and row["warps"] > 0 and not data["errors"]
    md = (tmp_path / "static.md").read_text()
    assert "greedy_scan_kernel" in md and "## How it counts" in md and "1. Basic blocks" in md


@needs_tools
def test_score_kernels_meet_targets(score_report):
    assert not score_report["errors"], score_report["errors"]
    for r in score_report["rows"]:
        limit = 600 if r["backend"] == "cuda" else 1000
        assert r["count"]["instructions_per_pixel"] <= limit, (r["kernel"], r["count"]["instructions_per_pixel"])
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stl_instructions"] == 0, r["kernel"]
        assert r["regs"] < 255, r["kernel"]


def test_tools_check_is_quiet_without_them(monkeypatch):
    import static_gpu as sg

    monkeypatch.setattr(sg, "triton_bin", lambda: None)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="nvdisasm"):
        sg._tool("nvdisasm")


def test_per_line_attribution_sums_to_the_total():
    text = listing("#k.cu:1", "MOV R0, RZ",
                   ".L_x_1:", "#k.cu:2", "MOV R2, RZ", "@P3 BRA `(.L_x_s)", *body(4), ".L_x_s:",
                   ".L_x_2:", "#lib.h:7<k.cu:3", *body(2), "@!P1 BRA `(.L_x_2)",
                   "#k.cu:2", "IADD3 R0, R0, 0x1, RZ", "@!P0 BRA `(.L_x_1)",
                   "#k.cu:4", "EXIT")
    c = count(text, [sc.TripRule("k.cu:2", "3", "outer"), sc.TripRule("lib.h:7", "5", "inner")])
    assert c.total == 1 + 3 * (2 + 4 + 5 * 3 + 2) + 1
    assert sum(c.by_line.values()) == pytest.approx(c.total)
    assert sum(c.by_source.values()) == pytest.approx(c.total)
    assert c.by_line["lib.h:7"] == pytest.approx(3 * 5 * 3)
    assert c.by_source["k.cu:3"] == pytest.approx(3 * 5 * 3)
    assert c.by_line["k.cu:2"] == pytest.approx(3 * (2 + 4 + 2))


def test_known_value_is_lost_when_a_shuffle_or_wide_op_overwrites_it():
    base = ["#k.cu:1", "LDC R7, c[0x0][0x228]"]
    tail = ["ISETP.GE.AND P1, PT, R7, 0x4, PT", "@!P1 BRA `(.L_x_e)", *body(6), ".L_x_e:", "EXIT"]
    assert count(listing(*base, *tail), known={0x228: 1}).total == 4  # resolved: the 6 skipped
    for clobber in ("SHFL.IDX PT, R7, R2, 0x0, 0x1f", "IMAD.WIDE.U32 R6, R2, 0x4, R4", "LDG.E.128 R4, desc[UR4][R2.64]"):
        assert count(listing(*base, clobber, *tail), known={0x228: 1}).total == 5 + 6, clobber



def test_finding_the_tools_does_not_import_triton():
    """The suite's first import of triton belongs to the interpreter tests (tests/_triton_env.py)."""
    code = ("import sys; sys.path.insert(0, 'bench'); import static_gpu as sg; sg.triton_bin(); "
            "assert 'triton' not in sys.modules, 'triton imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
