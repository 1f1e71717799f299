"""Launch configuration of the Pallas Triton lightning kernels (gpu_triton.py): the tile, warp and software-pipelining
knobs (``TritonParams``), how one call's static config is derived from them (``_config``: block length, column
tiles, the backward's stages by launch size), and the head-dim limits. Performance only: no knob changes a result
beyond rounding.

Measured on one H200 (JAX 0.11.2, bf16, H=64, D=128, MiniMax slopes): C=64, 4 warps and 3 forward stages were the
fastest defaults (num_warps 8, C=128 and full-width 128 tiles were slower; 2 forward stages were faster at B4, 3 at
B1); the backward's stages: ``_auto_bwd_stages``. Comparisons with fla: docs/kernels.md.
"""

from __future__ import annotations

import dataclasses

from pallas_kernels.lightning_attention import split

MAX_BLOCK_SIZE = 64
MIN_TILE = 16
MAX_HEAD_DIM = 256
DEFAULT_BWD_BLOCK = 64  # state tile of the backward kernels (Dk split for dQ / dK, Dv split for dV)
# Forward Dv tile when not given: 64, or 32 when that leaves fewer than _FWD_MIN_PROGRAMS programs
# (small batch * heads: more, smaller programs fill the GPU better).
_FWD_MIN_PROGRAMS = 256
DEFAULT_NUM_WARPS = 4
DEFAULT_NUM_STAGES = (3, None)  # (forward, backward); None: ``_auto_bwd_stages``

# The time of a wave of two backward programs per SM (2 pipelining stages: the smaller shared-memory footprint lets
# two share an SM) over that of a wave of one per SM (3 stages). The H200 rounds quoted in ``_auto_bwd_stages`` imply
# 1.73-1.84 at 256-512 programs; any value in [1.5, 2) makes the same choices at the five measured shapes (the rule
# was fitted on them).
_TWO_PER_SM_WAVE_COST = 1.85


def _auto_bwd_stages(programs: int) -> int:
    """Software-pipelining stages of the backward kernels for a launch of ``programs`` programs: 2 (two programs per
    SM, each slower) where that takes fewer wave-equivalents than 3 (one per SM), by wave count x cost per wave.

    On an H200, bwd alone at H64 D128, interleaved rounds (experiments/results/lightning_bwd_stages_rounds_h200.md),
    3 / 2 stages: B1 T16K (128 programs) 1.53 / 2.26 ms; B2 (256) 3.20 / 2.83; B3 (384) 4.24 / 4.89; B4 (512)
    6.52 / 6.00; B1 T64K (128) 5.93 / 8.70. The rule picks the faster at all five. Calibrated at D = 128 with the
    default 64-column tiles on an H200 only: ``_config`` applies it there and keeps 3 stages elsewhere.
    """
    sms = split.num_sms()
    one_per_sm = -(-programs // sms)
    two_per_sm = -(-programs // (2 * sms))
    return 2 if two_per_sm * _TWO_PER_SM_WAVE_COST < one_per_sm else 3


def _pow2_floor(x: int) -> int:
    return 1 << (int(x).bit_length() - 1)


def _pow2_ceil(x: int) -> int:
    return 1 << (int(x) - 1).bit_length() if x > 1 else 1


@dataclasses.dataclass(frozen=True)
class _Cfg:
    t: int  # real sequence length
    c: int  # block length C (power of two)
    nblk: int  # number of blocks; padded length = nblk * c
    fwd_block_v: int  # Dv tile of the forward kernel
    block_k: int  # Dk tile of the dQ / dK kernels
    block_v: int  # Dv tile of the dV kernel
    has_seg: bool
    num_warps: int
    num_stages: tuple[int, int]  # (forward, backward) software-pipelining stages
    interpret: bool

    @property
    def tp(self) -> int:
        return self.nblk * self.c


def _padded_head_dim(d: int, what: str) -> int:
    dp = max(MIN_TILE, _pow2_ceil(d))
    if dp > MAX_HEAD_DIM:
        raise ValueError(
            f"{what} head dim {d} (padded to {dp}) exceeds the Triton kernel's limit {MAX_HEAD_DIM}: "
            "the per-program state would not fit on chip; use another implementation"
        )
    return dp


@dataclasses.dataclass(frozen=True)
class TritonParams:
    """Static knobs of the Triton kernels (performance only; see ``lightning_attention``)."""

    block_size: int = 64
    interpret: bool = False
    fwd_block_v: int | None = None
    bwd_block: int = DEFAULT_BWD_BLOCK
    num_warps: int = DEFAULT_NUM_WARPS
    num_stages: tuple[int, int | None] = DEFAULT_NUM_STAGES  # backward None: by the launch size

    @staticmethod
    def make(block_size=64, interpret=False, fwd_block_v=None, bwd_block=DEFAULT_BWD_BLOCK,
             num_warps=DEFAULT_NUM_WARPS, num_stages=DEFAULT_NUM_STAGES) -> TritonParams:
        if num_stages is None:
            num_stages = DEFAULT_NUM_STAGES
        stages = (num_stages, num_stages) if isinstance(num_stages, int) else tuple(num_stages)
        return TritonParams(
            block_size=int(block_size), interpret=bool(interpret),
            fwd_block_v=None if fwd_block_v is None else int(fwd_block_v), bwd_block=int(bwd_block),
            num_warps=int(num_warps), num_stages=(int(stages[0]), None if stages[1] is None else int(stages[1])),
        )


def _config(p: TritonParams, b: int, t: int, h: int, dkp: int, dvp: int, has_seg: bool) -> _Cfg:
    fwd_block_v = p.fwd_block_v
    if fwd_block_v is None:
        fwd_block_v = 64 if b * h * max(1, dvp // 64) >= _FWD_MIN_PROGRAMS else 32
    fbv = min(dvp, max(MIN_TILE, _pow2_floor(fwd_block_v)))
    bk = min(dkp, max(MIN_TILE, _pow2_floor(p.bwd_block)))
    bv = min(dvp, max(MIN_TILE, _pow2_floor(p.bwd_block)))
    c = max(MIN_TILE, _pow2_floor(min(int(p.block_size), MAX_BLOCK_SIZE)))
    c = max(MIN_TILE, min(c, _pow2_ceil(t)))
    fwd_stages, bwd_stages = p.num_stages
    if bwd_stages is None:
        calibrated = dkp == dvp == 128 and bk == bv == DEFAULT_BWD_BLOCK  # the shapes _auto_bwd_stages was fitted on
        bwd_stages = _auto_bwd_stages(b * h * max(dkp // bk, dvp // bv)) if calibrated else 3
    return _Cfg(
        t=t, c=c, nblk=-(-t // c), fwd_block_v=fbv, block_k=bk, block_v=bv, has_seg=has_seg,
        num_warps=p.num_warps, num_stages=(fwd_stages, bwd_stages), interpret=p.interpret,
    )
