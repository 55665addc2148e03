"""Executed-instruction counting on SASS listings (``nvdisasm -c -gi``): basic blocks, the
control-flow graph, natural loops, trip counts from a source-line table, longest paths.

Used by bench/static_gpu.py (which compiles the kernels and owns the tables); kept apart so
that the counting rules can be tested on small synthetic listings without nvcc or Triton.

The counting rules (repeated in static_gpu.py's docstring and its .md output):

1. Basic blocks. Leaders: the function's first instruction, every branch target (BRA, BRX,
   JMP, JMX; BRX targets from nvdisasm's ``BRANCH_TARGETS`` note; a CALL to a label of the
   same function, sm_80's loop exit, is a branch) and the instruction after a branch, EXIT
   or RET. A CALL of a function does not end a block: it costs what its callee costs (the
   callee's own longest path, loops included). Blocks not reachable from the entry (the
   ``BRA self`` padding after the last EXIT) are ignored.
2. Edges. An unconditional BRA/JMP has its target only; a predicated one (``@P0 BRA``, a
   ``BRA`` with a predicate operand, ``BRA.DIV``) also falls through; EXIT and RET end the
   path unless predicated. A predicate whose value the caller fixed (``known`` register
   values: kernel parameters loaded from ``c[0x0][...]``, see ``propagate``) keeps only the
   edge it selects.
3. Loops. Dominators (iterative); a back edge goes to a block that dominates its source; the
   natural loop of a header is the union over its back edges. A retreating edge that is not a
   back edge (irreducible flow) is an error.
4. Trip counts cannot be read from SASS. Each loop is named by the source locations (every
   inline frame, innermost first) of its back-edge branches, then of its header's
   instructions; the first location found in the trip table gives T = the number of times the
   loop's header executes per entry into the loop (for the rotated loops compilers emit: the
   source iterations). A loop whose locations are in no table entry is an error.
5. Cost, innermost loop first: inner loops collapse to one node weighted by their cost; without
   the back edges the body is a DAG; ``iter`` = the longest path header -> a latch, ``last`` =
   the longest path header -> a block that leaves the loop; cost = (T - 1)·iter + last (for
   a rotated loop, latch = exit: T·iter); a fractional T < 1 (a warp-average: a loop only
   some warps enter) costs T·last. The function's count is the longest path entry ->
   an exit over the DAG with its outermost loops collapsed.
6. Longest path: at every branch that is not a loop back edge the longer side is counted, so
   the count is an upper bound for one thread. Blocks can be excluded ("cold") only with a
   stated reason: calls of named slow-path subroutines, or blocks most of whose located
   instructions (more than half, branches and convergence ops aside) come from named source
   lines (code the configuration never runs; the compiler mixes in a few rematerialised
   values from elsewhere). A cold mark that leaves no path to an exit is an error.
7. Every instruction reached counts one, predicated or not (a predicated-off instruction is
   still issued), BSSY/BSYNC/NOP included.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["Instr", "Function", "parse_sass", "Block", "Cfg", "build_cfg", "Loop", "find_loops",
           "TripRule", "ColdRule", "CountError", "Count", "count_function", "propagate"]


class CountError(ValueError):
    """The listing cannot be counted under the rules (unmapped loop, irreducible flow,
    a cold mark that cuts every path, an unknown branch form)."""


Loc = tuple  # (file basename, line)


@dataclass
class Instr:
    addr: int
    pred: str | None  # "P0", "!P0", "UP1", ... or None
    op: str  # full opcode with modifiers: "BRA", "ISETP.GE.AND", ...
    args: str  # operand text, annotations stripped
    locs: tuple  # ((file basename, line), ...) innermost frame first
    targets: tuple = ()  # branch / call target labels
    text: str = ""

    @property
    def base(self) -> str:
        return self.op.split(".")[0]


@dataclass
class Function:
    name: str
    instrs: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)  # label -> index into instrs


_LOC = re.compile(r'//## File "([^"]+)", line (\d+)')
_INS = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(?:\{\s*)?(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;?\s*(?:\}\s*)?$")
_LABEL = re.compile(r"^([.$\w][\w.$@]*):\s*$")
_TICK = re.compile(r"`\(([^)]+)\)")
_BT = re.compile(r'BRANCH_TARGETS\s+([^"*]+)')
_SECTION = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")
_FUNC = re.compile(r"^\s*\.type\s+([^,\s]+),@function")


def parse_sass(text: str) -> dict[str, Function]:
    """Functions of an ``nvdisasm -c -gi`` (or ``-g``) listing: the kernels (one per
    ``.text.<name>`` section) and the subroutines inside them (``$__internal_...``).

    Each instruction carries the source location group printed above it (inherited while
    nvdisasm prints none), innermost inline frame first, as (file basename, line)."""
    funcs: dict[str, Function] = {}
    cur: Function | None = None
    pending_func: set[str] = set()
    locs: list = []
    loc_open = False  # consecutive //## lines form one group
    for raw in text.splitlines():
        line = raw.rstrip()
        m = _LOC.search(line)
        if m:
            if not loc_open:
                locs = []
                loc_open = True
            path, ln = m.group(1), int(m.group(2))
            locs.append((path.rsplit("/", 1)[-1], ln))
            continue
        loc_open = False
        m = _SECTION.match(line)
        if m:
            cur = None
            continue
        m = _FUNC.match(line)
        if m:
            pending_func.add(m.group(1))
            continue
        m = _LABEL.match(line.strip())
        if m and not line.lstrip().startswith("/*"):
            name = m.group(1)
            if name in pending_func:
                cur = funcs.setdefault(name, Function(name))
                pending_func.discard(name)
                locs = []
            elif cur is not None:
                cur.labels[name] = len(cur.instrs)
            continue
        m = _INS.match(line)
        if m and cur is not None:
            addr = int(m.group(1), 16)
            pred = m.group(2).strip()[1:] if m.group(2) else None
            op, rest = m.group(3), m.group(4)
            targets: tuple = ()
            bt = _BT.search(rest)
            if bt:
                targets = tuple(t.strip() for t in bt.group(1).split(",") if t.strip())
            elif op.split(".")[0] in ("BRA", "JMP", "CALL", "BRX", "JMX", "BSSY"):
                targets = tuple(_TICK.findall(rest))
            args = re.sub(r"\(\*.*?\*\)", "", rest).strip().rstrip(";").strip()
            cur.instrs.append(Instr(addr, pred, op, args, tuple(locs), targets, line.strip()))
    return funcs


# -- control-flow graph ---------------------------------------------------------------------------

_BRANCHES = ("BRA", "JMP", "BRX", "JMX")


@dataclass
class Block:
    id: int
    start: int  # instruction indices [start, end)
    end: int
    succs: list = field(default_factory=list)
    exits: bool = False  # the path may end here (EXIT / RET)


@dataclass
class Cfg:
    func: Function
    blocks: list
    entry: int = 0

    def instrs(self, b: int) -> list:
        blk = self.blocks[b]
        return self.func.instrs[blk.start:blk.end]


def _conditional(ins: Instr) -> bool:
    if ins.pred not in (None, "PT"):
        return True
    if ".DIV" in ins.op or ".CONV" in ins.op:
        return True
    # a predicate as the first operand ("BRA.U !UP0, `(...)", "BRA P0, ...")
    return bool(re.match(r"^!?U?P[T0-9]+\s*,", ins.args)) and not ins.args.startswith("PT,")


def _is_branch(x: Instr, labels: dict) -> bool:
    """BRA/JMP/BRX/JMX, and a CALL to a label of the same function: sm_80 code leaves loops
    with ``@P0 CALL.REL.NOINC `(.L_x_n)``, a jump that never returns."""
    if x.base in _BRANCHES:
        return True
    return x.base == "CALL" and bool(x.targets) and all(t in labels for t in x.targets)


def build_cfg(func: Function, known_preds: dict | None = None) -> Cfg:
    """Basic blocks and edges of ``func`` (rules 1 and 2). ``known_preds`` maps an
    instruction index to the value (True/False) of its guard predicate where it is known;
    a branch with a known guard keeps one edge, an EXIT with a known-true guard ends the path."""
    known_preds = known_preds or {}
    ins = func.instrs
    if not ins:
        raise CountError(f"{func.name}: no instructions")
    lab = func.labels
    leaders = {0}
    for i, x in enumerate(ins):
        if _is_branch(x, lab) or x.base in ("EXIT", "RET"):
            if i + 1 < len(ins):
                leaders.add(i + 1)
            if _is_branch(x, lab):
                if x.base in ("BRX", "JMX") and not x.targets:
                    raise CountError(f"{func.name}: indirect branch without known targets at {x.addr:#x}")
                for t in x.targets:
                    if t not in lab:
                        raise CountError(f"{func.name}: branch target {t} not in the function")
                    leaders.add(lab[t])
    starts = sorted(leaders)
    at = {s: k for k, s in enumerate(starts)}
    blocks = [Block(k, s, (starts[k + 1] if k + 1 < len(starts) else len(ins))) for k, s in enumerate(starts)]
    for blk in blocks:
        last_i = blk.end - 1
        last = ins[last_i]
        nxt = at.get(blk.end)
        kp = known_preds.get(last_i)
        if _is_branch(last, lab):
            cond = _conditional(last)
            tgts = [at[lab[t]] for t in last.targets]
            if cond and kp is not None and last.pred not in (None, "PT"):
                blk.succs = tgts if kp else ([nxt] if nxt is not None else [])
            else:
                blk.succs = tgts + ([nxt] if cond and nxt is not None else [])
        elif last.base in ("EXIT", "RET"):
            cond = last.pred not in (None, "PT")
            if cond and kp is False:
                blk.succs = [nxt] if nxt is not None else []
            else:
                blk.exits = True
                blk.succs = [nxt] if cond and kp is None and nxt is not None else []
        else:
            blk.succs = [nxt] if nxt is not None else []
            if nxt is None:
                blk.exits = True
        blk.succs = list(dict.fromkeys(blk.succs))
    return Cfg(func, blocks)


def _reachable(cfg: Cfg, banned: set) -> list:
    seen, order, stack = set(), [], [cfg.entry]
    while stack:
        b = stack.pop()
        if b in seen or b in banned:
            continue
        seen.add(b)
        order.append(b)
        stack.extend(cfg.blocks[b].succs)
    return order


def _dominators(cfg: Cfg, nodes: list) -> dict:
    node_set = set(nodes)
    preds = {n: [] for n in nodes}
    for n in nodes:
        for s in cfg.blocks[n].succs:
            if s in node_set:
                preds[s].append(n)
    dom = {n: set(nodes) for n in nodes}
    dom[cfg.entry] = {cfg.entry}
    changed = True
    while changed:
        changed = False
        for n in nodes:
            if n == cfg.entry:
                continue
            ps = [dom[p] for p in preds[n]]
            new = (set.intersection(*ps) if ps else set()) | {n}
            if new != dom[n]:
                dom[n] = new
                changed = True
    return dom


@dataclass(eq=False)
class Loop:
    header: int
    body: set
    latches: list
    parent: "Loop | None" = None
    children: list = field(default_factory=list)
    trips: float = 0.0
    key: str = ""
    reason: str = ""
    iter_cost: float = 0.0
    cost: float = 0.0
    graph: tuple = ()

    @property
    def depth(self) -> int:
        d, p = 0, self.parent
        while p is not None:
            d, p = d + 1, p.parent
        return d


def find_loops(cfg: Cfg, nodes: list) -> list:
    """Natural loops of the reachable ``nodes`` (rule 3), innermost first, nested."""
    dom = _dominators(cfg, nodes)
    node_set = set(nodes)
    # retreating edges by DFS; each must be a back edge
    color, back = {}, []
    for root in [cfg.entry]:
        stack = [(root, iter(cfg.blocks[root].succs))]
        color[root] = 1
        while stack:
            n, it = stack[-1]
            for s in it:
                if s not in node_set:
                    continue
                if color.get(s) == 1:
                    back.append((n, s))
                elif s not in color:
                    color[s] = 1
                    stack.append((s, iter(cfg.blocks[s].succs)))
                    break
            else:
                color[n] = 2
                stack.pop()
    preds = {n: [] for n in nodes}
    for n in nodes:
        for s in cfg.blocks[n].succs:
            if s in node_set:
                preds[s].append(n)
    loops: dict[int, Loop] = {}
    for u, h in back:
        if h not in dom[u]:
            raise CountError(f"{cfg.func.name}: irreducible control flow (edge {cfg.func.instrs[cfg.blocks[u].end - 1].addr:#x}"
                             f" -> {cfg.func.instrs[cfg.blocks[h].start].addr:#x} is not a back edge)")
        body, stack = {h, u}, [u]
        while stack:
            n = stack.pop()
            if n == h:
                continue
            for p in preds[n]:
                if p not in body:
                    body.add(p)
                    stack.append(p)
        lp = loops.setdefault(h, Loop(h, set(), []))
        lp.body |= body
        lp.latches.append(u)
    out = sorted(loops.values(), key=lambda lp: len(lp.body))
    for i, lp in enumerate(out):
        for outer in out[i + 1:]:
            if lp.header in outer.body and lp.body <= outer.body and outer is not lp:
                lp.parent = outer
                outer.children.append(lp)
                break
    return out


# -- tables -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TripRule:
    """Trip count of the loop at ``file:line``: ``expr`` evaluated with the configuration's
    names (C, R, tile sizes, ``cdiv``), and a one-line reason."""

    loc: str  # "scores.cu:62"
    expr: str
    reason: str


@dataclass(frozen=True)
class ColdRule:
    """Blocks never run in the configuration, with the reason. ``call``: a regex on callee
    names (a block calling one is cold); ``lines``: "file:first-last" source lines (a block
    more than half of whose located instructions have a frame among them is cold)."""

    reason: str
    call: str = ""
    lines: str = ""

    def line_set(self) -> tuple:
        if not self.lines:
            return ()
        f, rng = self.lines.rsplit(":", 1)
        lo, _, hi = rng.partition("-")
        return f, int(lo), int(hi or lo)


def _loc_key(loc) -> str:
    return f"{loc[0]}:{loc[1]}"


def _eval(expr: str, env: dict) -> float:
    names = {"cdiv": lambda a, b: -(-a // b), "ceil": math.ceil, "floor": math.floor, "min": min, "max": max}
    names.update(env)
    try:
        return float(eval(expr, {"__builtins__": {}}, names))  # noqa: S307 - the tool's own table
    except Exception as err:
        raise CountError(f"trip expression {expr!r}: {type(err).__name__}: {err}") from None


# -- constant propagation of known kernel parameters -----------------------------------------------------

_CMP = {"EQ": lambda a, b: a == b, "NE": lambda a, b: a != b, "LT": lambda a, b: a < b, "LE": lambda a, b: a <= b,
        "GT": lambda a, b: a > b, "GE": lambda a, b: a >= b}
_CONST = re.compile(r"^c\[0x0\]\[(0x[0-9a-f]+)\]$")


def _imm(tok: str, regs: dict):
    tok = tok.strip()
    if tok in ("RZ", "URZ"):
        return 0
    if re.match(r"^-?0x[0-9a-f]+$", tok) or re.match(r"^-?\d+$", tok):
        return int(tok, 0)
    m = _CONST.match(tok)
    if m:
        return regs.get(("c", int(m.group(1), 16)))
    return regs.get(tok)


def _transfer(ins: Instr, regs: dict, preds: dict) -> None:
    """One instruction's effect on the known values (32-bit signed words). Anything written
    that is not understood becomes unknown."""
    parts = [p.strip() for p in ins.args.split(",")]
    dst = parts[0] if parts else ""
    guarded = ins.pred not in (None, "PT")
    if ins.base == "ISETP" and len(parts) >= 5 and not guarded:
        cmp = ins.op.split(".")[1]
        a, b = _imm(parts[2], regs), _imm(parts[3], regs)
        extra = ins.op.split(".")
        ok = cmp in _CMP and a is not None and b is not None and parts[1] == "PT" and parts[4] == "PT" \
            and ".EX" not in ins.op and extra[-1] == "AND"
        if ok:
            if ".U32" in ins.op:
                a, b = a & 0xFFFFFFFF, b & 0xFFFFFFFF
            preds[dst] = _CMP[cmp](a, b)
            preds["!" + dst] = not preds[dst]
        else:
            for d in (parts[0], parts[1]):
                preds.pop(d, None)
                preds.pop("!" + d, None)
        return
    if (ins.base in ("LDC", "ULDC", "MOV", "UMOV") or ins.op in ("IMAD.MOV.U32", "IMAD.MOV")) and not guarded \
            and ".64" not in ins.op:
        val = None
        if ins.base in ("LDC", "ULDC", "MOV", "UMOV") and len(parts) == 2:
            val = _imm(parts[1], regs)
        elif ins.op in ("IMAD.MOV.U32", "IMAD.MOV") and len(parts) == 4 and parts[1] == "RZ" and parts[2] == "RZ":
            val = _imm(parts[3], regs)
        if val is None:
            regs.pop(dst, None)
        else:
            regs[dst] = val
        return
    # any other write: the destination (and the rest of a 64/128-bit register group) becomes
    # unknown; after a predicate destination (SHFL PT, R3, ...) the next operand is one too
    dsts = [dst]
    if re.fullmatch(r"!?U?P(T|\d)", dst) and len(parts) > 1:
        dsts.append(parts[1])
    wide = any(t in ins.op for t in (".64", ".WIDE", ".128", ".F64")) or ins.base in (
        "LDG", "LDS", "LD", "LDL", "ULDC", "LDC", "DADD", "DMUL", "DFMA", "DMNMX", "F2F", "I2F", "F2I")
    for d in (d for x in dsts for d in re.findall(r"U?R\d+|U?P\d+", x)):
        regs.pop(d, None)
        preds.pop(d, None)
        preds.pop("!" + d, None)
        m = re.match(r"(U?R)(\d+)", d)
        if m and wide:
            for k in range(1, 4):
                regs.pop(f"{m.group(1)}{int(m.group(2)) + k}", None)
    # predicates in the first two operands are destinations (SETP pairs, carries of IADD3,
    # LEA, IMAD.WIDE, ...); R2P writes several
    written = parts[:2] if ins.base != "R2P" else ["P0", "P1", "P2", "P3", "P4", "P5", "P6"]
    for d in written:
        d = d.lstrip("!")
        if re.fullmatch(r"U?P\d", d):
            preds.pop(d, None)
            preds.pop("!" + d, None)


def propagate(func: Function, known_consts: dict) -> dict:
    """Guard values that follow from ``known_consts`` ({constant-bank offset: 32-bit value},
    e.g. a kernel parameter) along every path: a forward data-flow over the CFG (meet: keep
    a value only if every predecessor agrees). Returns {instruction index: True/False} for
    branch and EXIT guards that are known."""
    if not known_consts:
        return {}
    cfg = build_cfg(func)
    consts = {("c", int(k)): int(v) for k, v in known_consts.items()}
    n = len(cfg.blocks)
    state_in: list = [None] * n
    state_in[cfg.entry] = (dict(consts), {})
    work = [cfg.entry]
    outs: list = [None] * n
    while work:
        b = work.pop()
        regs, preds = dict(state_in[b][0]), dict(state_in[b][1])
        for ins in cfg.instrs(b):
            _transfer(ins, regs, preds)
        outs[b] = (regs, preds)
        for s in cfg.blocks[b].succs:
            if state_in[s] is None:
                state_in[s] = (dict(regs), dict(preds))
                work.append(s)
            else:
                r0, p0 = state_in[s]
                r1 = {k: v for k, v in r0.items() if regs.get(k, object()) == v}
                p1 = {k: v for k, v in p0.items() if preds.get(k, object()) == v}
                if len(r1) != len(r0) or len(p1) != len(p0):
                    state_in[s] = (r1, p1)
                    work.append(s)
    known: dict = {}
    for b in range(n):
        if state_in[b] is None:
            continue
        regs, preds = dict(state_in[b][0]), dict(state_in[b][1])
        blk = cfg.blocks[b]
        for i in range(blk.start, blk.end):
            ins = func.instrs[i]
            if (_is_branch(ins, func.labels) or ins.base == "EXIT") and ins.pred not in (None, "PT") and ins.pred in preds:
                known[i] = preds[ins.pred]
            _transfer(ins, regs, preds)
    return known


# -- counting -------------------------------------------------------------------------------------------


@dataclass
class Count:
    """The count of one function: ``total`` instructions on the longest path (per thread),
    the loops (innermost first) and the cold exclusions applied."""

    total: float
    loops: list
    cold: list  # (reason, blocks, instructions excluded)
    blocks: int
    instructions: int
    resolved_branches: int = 0
    by_line: dict = field(default_factory=dict)  # innermost "file:line" -> instructions on the path
    by_source: dict = field(default_factory=dict)  # outermost (kernel) "file:line" -> instructions


def _cold_blocks(cfg: Cfg, nodes: list, cold: list, callee_names: set) -> tuple[set, list]:
    banned, notes = set(), []
    for rule in cold:
        hit = []
        if rule.call:
            rx = re.compile(rule.call)
            for b in nodes:
                if any(x.base == "CALL" and not _is_branch(x, cfg.func.labels) and any(rx.search(t) for t in x.targets)
                       for x in cfg.instrs(b)):
                    hit.append(b)
        if rule.lines:
            f, lo, hi = rule.line_set()
            for b in nodes:
                located = [x for x in cfg.instrs(b) if x.locs and x.base not in ("BRA", "BSSY", "BSYNC", "NOP")]
                hot = sum(1 for x in located if any(fl == f and lo <= ln <= hi for fl, ln in x.locs))
                if located and 2 * hot > len(located):
                    hit.append(b)
        hit = sorted(set(hit) - banned)
        banned |= set(hit)
        notes.append((rule.reason, len(hit), sum(cfg.blocks[b].end - cfg.blocks[b].start for b in hit)))
    return banned, notes


def _longest(nodes: list, succ: dict, weight: dict, src, targets: set) -> float:
    """Longest node-weighted path src -> any of ``targets`` in a DAG (-inf if none)."""
    return _longest_table(succ, weight, src, targets).get(src, -math.inf)


def _path(succ: dict, weight: dict, src, targets: set) -> list:
    """The nodes of one longest path src -> a target (empty if none)."""
    best = _longest_table(succ, weight, src, targets)
    if best.get(src, -math.inf) == -math.inf:
        return []
    path, n = [src], src
    while True:
        nxt = [s for s in succ.get(n, ()) if best.get(s, -math.inf) > -math.inf]
        tail = max((best[s] for s in nxt), default=-math.inf)
        if n in targets and 0.0 >= tail:
            return path
        n = max(nxt, key=lambda s: best[s])
        path.append(n)


def _longest_table(succ: dict, weight: dict, src, targets: set) -> dict:
    order, seen = [], set()

    def visit(n):  # iterative post-order
        stack = [(n, iter(succ.get(n, ())))]
        seen.add(n)
        while stack:
            x, it = stack[-1]
            for s in it:
                if s not in seen:
                    seen.add(s)
                    stack.append((s, iter(succ.get(s, ()))))
                    break
            else:
                order.append(x)
                stack.pop()

    visit(src)
    best: dict = {}
    for n in order:  # successors first
        tail = max((best[s] for s in succ.get(n, ()) if s in best), default=-math.inf)
        here = 0.0 if n in targets else -math.inf
        v = max(tail, here)
        best[n] = weight[n] + v if v > -math.inf else -math.inf
    return best


def count_function(funcs: dict, name: str, trips: list, env: dict, cold: list = (), known_consts: dict | None = None,
                   _stack: tuple = ()) -> Count:
    """Executed instructions per thread of ``funcs[name]`` under the rules of this module.

    trips: TripRule list (the first whose ``loc`` is among a loop's locations wins, loops'
    back-edge locations before header locations, innermost frame first). env: the names the
    trip expressions use. cold: ColdRule list. known_consts: {c[0x0] offset: 32-bit value}
    of kernel parameters fixed by the configuration (see ``propagate``)."""
    if name in _stack:
        raise CountError(f"recursive call of {name}")
    func = funcs[name]
    kp = propagate(func, known_consts or {})
    cfg = build_cfg(func, kp)
    reach = _reachable(cfg, set())
    callee_cost: dict = {}
    for b in reach:
        for x in cfg.instrs(b):
            if x.base == "CALL" and not _is_branch(x, func.labels):
                for t in x.targets:
                    if t not in funcs:
                        raise CountError(f"{name}: call of unknown {t}")
    banned, notes = _cold_blocks(cfg, reach, list(cold), set())
    nodes = _reachable(cfg, banned)
    if not nodes:
        raise CountError(f"{name}: the entry block is cold")
    loops = find_loops(cfg, nodes)
    table = {r.loc: r for r in trips}

    def block_weight(b: int) -> float:
        w = 0.0
        for x in cfg.instrs(b):
            w += 1
            if x.base == "CALL" and not _is_branch(x, func.labels):
                for t in x.targets:
                    if t not in callee_cost:
                        callee_cost[t] = count_function(funcs, t, trips, env, cold, None, _stack + (name,)).total
                    w += callee_cost[t]
        return w

    unmapped = []
    for lp in loops:
        cands = []
        for u in lp.latches:
            cands += list(func.instrs[cfg.blocks[u].end - 1].locs)
        for x in cfg.instrs(lp.header):
            cands += [loc for loc in x.locs if loc not in cands]
        rule = next((table[_loc_key(c)] for c in cands if _loc_key(c) in table), None)
        if rule is None:
            addr = func.instrs[cfg.blocks[lp.header].start].addr
            seen = ", ".join(dict.fromkeys(_loc_key(c) for c in cands)) or "no line info"
            unmapped.append(f"loop at {addr:#x} (its source lines: {seen})")
            continue
        lp.trips, lp.key, lp.reason = _eval(rule.expr, env), rule.loc, rule.reason
    if unmapped:
        raise CountError(f"{name}: not in the trip table: " + "; ".join(unmapped))

    owner: dict = {}  # block -> innermost loop
    for lp in loops:  # innermost first
        for b in lp.body:
            owner.setdefault(b, lp)

    def rep(b: int, level: "Loop | None"):
        """The node standing for block b inside ``level``: b itself or the child loop of
        ``level`` that contains it."""
        lp = owner.get(b)
        if lp is None or lp is level:
            return b
        while lp.parent is not level:
            lp = lp.parent
            if lp is None:
                return b
        return lp

    def graph(level, members):
        nodes_l = set()
        succ: dict = {}
        for b in members:
            nodes_l.add(rep(b, level))
        for b in members:
            r = rep(b, level)
            for s in cfg.blocks[b].succs:
                if s not in members or s in banned:
                    continue
                if level is not None and s == level.header and b in level.latches:
                    continue  # back edge of this level
                rs = rep(s, level)
                if rs is r:
                    continue
                succ.setdefault(r, []).append(rs)
        return nodes_l, succ

    weight: dict = {}

    def weigh(nodes_g):
        """Weights of a (collapsed) graph's nodes: an inner loop costs its whole cost."""
        for nd in nodes_g:
            if isinstance(nd, Loop):
                weight[nd] = nd.cost
            elif nd not in weight:
                weight[nd] = block_weight(nd)

    for lp in loops:
        members = lp.body - banned
        nodes_l, succ = graph(lp, members)
        weigh(nodes_l)
        latches = {rep(u, lp) for u in lp.latches}
        exiting = {rep(b, lp) for b in members if any(s not in lp.body for s in cfg.blocks[b].succs) or cfg.blocks[b].exits}
        it = _longest(list(nodes_l), succ, weight, lp.header, latches)
        last = _longest(list(nodes_l), succ, weight, lp.header, exiting) if exiting else it
        if it == -math.inf:
            raise CountError(f"{name}: loop {lp.key}: no path from its header to a latch (cold marks cut it)")
        if last == -math.inf:
            last = it
        lp.iter_cost = it
        lp.cost = max(0.0, lp.trips - 1) * it + last if lp.trips >= 1 else lp.trips * last
        lp.graph = (succ, latches, exiting or latches)
    members = set(nodes)
    nodes_t, succ = graph(None, members)
    weigh(nodes_t)
    exits = set()
    for b in nodes:
        if cfg.blocks[b].exits:
            exits.add(rep(b, None))
    total = _longest(list(nodes_t), succ, weight, rep(cfg.entry, None), exits)
    if total == -math.inf:
        raise CountError(f"{name}: no path from the entry to an exit (cold marks cut every path)")

    # where the counted instructions come from: walk the longest paths, loops expanded
    by_line: dict = {}
    by_source: dict = {}

    def add(path, mult):
        for nd in path:
            if isinstance(nd, Loop):
                lsucc, lat, ext = nd.graph
                if nd.trips >= 1:
                    add(_path(lsucc, weight, nd.header, lat), mult * (nd.trips - 1))
                    add(_path(lsucc, weight, nd.header, ext), mult)
                else:
                    add(_path(lsucc, weight, nd.header, ext), mult * nd.trips)
                continue
            for x in cfg.instrs(nd):
                inner = _loc_key(x.locs[0]) if x.locs else "?"
                outer = _loc_key(x.locs[-1]) if x.locs else "?"
                by_line[inner] = by_line.get(inner, 0.0) + mult
                by_source[outer] = by_source.get(outer, 0.0) + mult
                if x.base == "CALL" and not _is_branch(x, func.labels):
                    for t in x.targets:
                        by_line[f"call {t}"] = by_line.get(f"call {t}", 0.0) + mult * callee_cost[t]
                        by_source[outer] = by_source.get(outer, 0.0) + mult * callee_cost[t]

    add(_path(succ, weight, rep(cfg.entry, None), exits), 1.0)
    return Count(total, loops, notes, len(nodes), sum(cfg.blocks[b].end - cfg.blocks[b].start for b in nodes),
                 resolved_branches=len(kp), by_line=by_line, by_source=by_source)


def cfg_mismatches(func: Function, edges: dict) -> list:
    """Blocks whose successors differ from another CFG of the same code (nvdisasm -bbcfg):
    ``edges`` maps the address of a block's last instruction to the set of its successors'
    first addresses (a finer block split elsewhere does not matter: only the ends of our
    blocks are compared). Returns the differing blocks' last addresses."""
    cfg = build_cfg(func)
    bad = []
    for b in _reachable(cfg, set()):
        blk = cfg.blocks[b]
        last = func.instrs[blk.end - 1].addr
        mine = {func.instrs[cfg.blocks[s].start].addr for s in blk.succs}
        if mine != edges.get(last, set()):
            bad.append(last)
    return bad
