"""Sim-vs-real metrics: pure functions over numpy arrays (no file, no CTS, no OpenDC), and the checks built on them.

Times are milliseconds on a common origin (each side's first submission at 0); CPU series are cores busy per bin.
The thresholds default to the criteria of the original toolkit's sim-vs-real comparison (``Thresholds``); each
check is PASS, FAIL or INFO (a figure without a threshold, or one that cannot be computed, with the reason).

Public API::

    ks_2samp(a, b) -> (D, p)                      two-sample Kolmogorov-Smirnov statistic and asymptotic p-value
    rel_error(sim, real, floor=0.0)               |sim - real| / max(|real|, floor)
    percentile_errors(real, sim, qs, floor)       {q: (real_p, sim_p, rel_err)}
    makespan_limit_ms(real_ms, thresholds)        the allowed absolute makespan error for a run of that length
    cumulative_counts(times, edges)               events at or before each edge
    throughput_rmse(real_ends, sim_ends, edges, max_lag) -> (rmse_at_0, best_rmse, best_lag)
    binned_amount(starts, ends, amounts, edges)   each interval's amount spread evenly over it, summed per bin
    smape(real, sim), pearson(real, sim), rmse(real, sim)
    abs_summary(errors)                           p50/p95/max of |errors| and the mean signed error
    Check, Thresholds, checks(...) -> list[Check], overall(checks)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

PASS, FAIL, INFO = "PASS", "FAIL", "INFO"
WAIT_QUANTILES = (50, 95, 99)


# ---- statistics ----


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test (two-sided): the statistic D = sup |F_a - F_b| and its p-value from the
    asymptotic Kolmogorov distribution with Stephens' small-sample correction (lambda = (sqrt(ne) + 0.12 +
    0.11 / sqrt(ne)) D, ne = n m / (n + m)). Ties are handled exactly in D (both ECDFs jump at the same value).
    Empty input: (nan, nan)."""
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    n, m = a.size, b.size
    if n == 0 or m == 0:
        return math.nan, math.nan
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / n
    fb = np.searchsorted(b, grid, side="right") / m
    d = float(np.max(np.abs(fa - fb)))
    return d, kolmogorov_sf(d, n * m / (n + m))


def kolmogorov_sf(d: float, ne: float) -> float:
    """P(D >= d) for the two-sample statistic with effective size ``ne`` (asymptotic series, Stephens' correction)."""
    if d <= 0:
        return 1.0
    sq = math.sqrt(ne)
    lam = (sq + 0.12 + 0.11 / sq) * d
    if lam < 0.2:
        return 1.0
    k = np.arange(1, 101, dtype=np.float64)
    p = 2.0 * float(np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k * k * lam * lam)))
    return min(1.0, max(0.0, p))


def rel_error(sim: float, real: float, floor: float = 0.0) -> float:
    """Relative error |sim - real| / max(|real|, floor); nan when that denominator is 0 (and sim differs)."""
    den = max(abs(real), floor)
    if den == 0:
        return 0.0 if sim == real else math.nan
    return abs(sim - real) / den


def percentile_errors(real: np.ndarray, sim: np.ndarray, qs: tuple = WAIT_QUANTILES,
                      floor: float = 0.0) -> dict[int, tuple[float, float, float]]:
    """{q: (real percentile, sim percentile, relative error)} (numpy's linear interpolation); nan when empty."""
    out = {}
    for q in qs:
        if len(real) == 0 or len(sim) == 0:
            out[q] = (math.nan, math.nan, math.nan)
            continue
        r, s = float(np.percentile(real, q)), float(np.percentile(sim, q))
        out[q] = (r, s, rel_error(s, r, floor))
    return out


def cumulative_counts(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many of ``times`` are at or before each edge."""
    return np.searchsorted(np.sort(np.asarray(times)), np.asarray(edges), side="right").astype(np.float64)


def throughput_rmse(real_ends: np.ndarray, sim_ends: np.ndarray, edges: np.ndarray,
                    max_lag: int) -> tuple[float, float, int]:
    """RMSE between the cumulative completion curves (fraction of the real task count, sampled at ``edges``) at lag
    0 and at the best lag in -max_lag..+max_lag bins, and that lag (positive: the simulation runs ``lag`` bins
    late; the shifted curve holds its end values). Ties between lags go to the smallest |lag|."""
    total = max(len(real_ends), 1)
    r = cumulative_counts(real_ends, edges) / total
    s = cumulative_counts(sim_ends, edges) / total
    n = len(edges)
    if n == 0:
        return math.nan, math.nan, 0
    best, best_lag, at0 = math.inf, 0, math.nan
    for lag in sorted(range(-max_lag, max_lag + 1), key=lambda x: (abs(x), x)):
        idx = np.clip(np.arange(n) + lag, 0, n - 1)  # compare real[t] with sim[t + lag]
        err = float(np.sqrt(np.mean((r - s[idx]) ** 2)))
        if lag == 0:
            at0 = err
        if err < best - 1e-15:
            best, best_lag = err, lag
    return at0, best, best_lag


def binned_amount(starts: np.ndarray, ends: np.ndarray, amounts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Amount per bin [edges[k], edges[k+1]) when each interval [start, end) spreads its amount evenly over its
    length (a zero-length interval puts it all at its start). Exact: the running total is piecewise linear between
    interval ends, so it is evaluated at the bin edges by interpolation."""
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.float64)
    amounts = np.asarray(amounts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if len(edges) < 2:
        return np.zeros(0)
    if starts.size == 0:
        return np.zeros(len(edges) - 1)
    point = ends <= starts
    total = np.zeros(len(edges))
    if point.any():  # instantaneous amounts: a step at the start
        ps, pa = starts[point], amounts[point]
        order = np.argsort(ps, kind="stable")
        ps, cum = ps[order], np.cumsum(pa[order])
        k = np.searchsorted(ps, edges, side="right")
        total += np.where(k > 0, cum[np.maximum(k - 1, 0)], 0.0)
    s, e, a = starts[~point], ends[~point], amounts[~point]
    if s.size:
        rate = a / (e - s)
        t = np.concatenate([s, e])
        d = np.concatenate([rate, -rate])
        order = np.argsort(t, kind="stable")
        t, d = t[order], d[order]
        level = np.cumsum(d)  # rate in force after each event
        cum = np.concatenate([[0.0], np.cumsum(level[:-1] * np.diff(t))])  # running total at each event
        total += np.interp(edges, t, cum, left=0.0, right=cum[-1])
    return np.diff(total)


def smape(real: np.ndarray, sim: np.ndarray) -> float:
    """Symmetric mean absolute percentage error, mean of 2|s - r| / (|r| + |s|) over the bins where either is
    non-zero (two idle bins agree); nan when every bin is idle on both sides."""
    r, s = np.asarray(real, dtype=np.float64), np.asarray(sim, dtype=np.float64)
    den = np.abs(r) + np.abs(s)
    busy = den > 0
    if not busy.any():
        return math.nan
    return float(np.mean(2 * np.abs(s[busy] - r[busy]) / den[busy]))


def pearson(real: np.ndarray, sim: np.ndarray) -> float:
    """Pearson correlation; nan when either series is constant or shorter than 2."""
    r, s = np.asarray(real, dtype=np.float64), np.asarray(sim, dtype=np.float64)
    if r.size < 2 or np.std(r) == 0 or np.std(s) == 0:
        return math.nan
    return float(np.corrcoef(r, s)[0, 1])


def rmse(real: np.ndarray, sim: np.ndarray) -> float:
    """Root mean square error; nan when empty."""
    r, s = np.asarray(real, dtype=np.float64), np.asarray(sim, dtype=np.float64)
    return float(np.sqrt(np.mean((s - r) ** 2))) if r.size else math.nan


def abs_summary(errors: np.ndarray) -> dict[str, float]:
    """p50, p95 and max of |errors|, and the mean signed error (all nan when empty)."""
    e = np.asarray(errors, dtype=np.float64)
    if e.size == 0:
        return {"p50_abs": math.nan, "p95_abs": math.nan, "max_abs": math.nan, "mean": math.nan}
    a = np.abs(e)
    return {"p50_abs": float(np.percentile(a, 50)), "p95_abs": float(np.percentile(a, 95)),
            "max_abs": float(a.max()), "mean": float(e.mean())}


# ---- checks ----


@dataclass
class Thresholds:
    """Pass criteria (defaults: the original toolkit's sim-vs-real criteria). Fractions, not percent."""

    wait_rel: dict = field(default_factory=lambda: {50: 0.05, 95: 0.10, 99: 0.20})  # percentile -> max rel. error
    wait_floor_ms: float = 1000.0  # a wait percentile below this is divided by this instead (OpenDC's 1 s grid)
    ks_alpha: float = 0.05  # the KS test passes when p >= alpha
    throughput_rmse: float = 0.03  # of the task count
    max_lag_bins: int = 10
    makespan_rel: float = 0.01  # for runs of makespan_long_s or more
    makespan_abs_s: float = 6.0  # for shorter runs
    makespan_long_s: float = 600.0
    cpu_smape: float = 0.05
    cpu_pearson: float = 0.95
    cpu_rmse_median: float = 0.10  # RMSE <= this x the median of the real series
    start_p95_ms: float | None = None  # per-task start error at p95; None: reported, not judged

    def as_dict(self) -> dict:
        d = asdict(self)
        d["wait_rel"] = {str(k): v for k, v in self.wait_rel.items()}
        return d


@dataclass
class Check:
    """One row of the report: what was measured, against which limit, and the verdict."""

    name: str
    value: str
    limit: str
    verdict: str
    detail: str = ""


def makespan_limit_ms(real_ms: float, th: Thresholds) -> float:
    """Allowed |sim - real| makespan in ms: makespan_rel of the real makespan for long runs, else makespan_abs_s."""
    if real_ms >= th.makespan_long_s * 1000:
        return th.makespan_rel * real_ms
    return th.makespan_abs_s * 1000


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f} %"


def _num(x: float, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _judge(ok: bool | None) -> str:
    return INFO if ok is None else (PASS if ok else FAIL)


def checks(m: dict, th: Thresholds) -> list[Check]:
    """The PASS/FAIL rows from a metrics dict as built by ``tracekit.trace.sim_vs_real`` (keys: coverage, makespan,
    start, wait, ks, throughput, cpu)."""
    out: list[Check] = []
    cov = m["coverage"]
    out.append(Check("task coverage", f"{cov['matched']} matched of {cov['real']} real / {cov['sim']} simulated",
                     "every real task simulated and finished",
                     _judge(cov["real_unmatched"] == 0 and cov["sim_unfinished"] == 0),
                     f"real without simulation {cov['real_unmatched']}, simulated not in the run "
                     f"{cov['sim_unmatched']}, simulated unfinished {cov['sim_unfinished']}"))
    ms = m["makespan"]
    lim = makespan_limit_ms(ms["real_ms"], th)
    err = ms["sim_ms"] - ms["real_ms"]
    rule = (f"<= {100 * th.makespan_rel:g} % (run >= {th.makespan_long_s:g} s)" if ms["real_ms"] >= th.makespan_long_s
            * 1000 else f"<= {th.makespan_abs_s:g} s (run < {th.makespan_long_s:g} s)")
    out.append(Check("makespan", f"real {ms['real_ms'] / 1000:.3f} s, sim {ms['sim_ms'] / 1000:.3f} s, error "
                     f"{err / 1000:+.3f} s ({_pct(rel_error(ms['sim_ms'], ms['real_ms']))})", rule,
                     _judge(abs(err) <= lim if ms["real_ms"] > 0 or ms["sim_ms"] > 0 else None)))
    st = m["start"]
    out.append(Check("task start error", f"p50 {_num(st['p50_abs'] / 1000)} s, p95 {_num(st['p95_abs'] / 1000)} s, "
                     f"max {_num(st['max_abs'] / 1000)} s, mean {_num(st['mean'] / 1000, '+.3f')} s",
                     "report only" if th.start_p95_ms is None else f"p95 <= {th.start_p95_ms:g} ms",
                     _judge(None if th.start_p95_ms is None or math.isnan(st["p95_abs"])
                            else st["p95_abs"] <= th.start_p95_ms)))
    we = m["wait_error"]
    out.append(Check("task wait error", f"p50 {_num(we['p50_abs'] / 1000)} s, p95 {_num(we['p95_abs'] / 1000)} s, "
                     f"max {_num(we['max_abs'] / 1000)} s, mean {_num(we['mean'] / 1000, '+.3f')} s", "report only",
                     INFO))
    for q, (r, s, e) in m["wait"].items():
        limit = th.wait_rel.get(int(q))
        out.append(Check(f"wait p{q}", f"real {_num(r / 1000)} s, sim {_num(s / 1000)} s, error {_pct(e)}",
                         f"<= {100 * limit:g} % (denominator >= {th.wait_floor_ms:g} ms)" if limit is not None
                         else "report only",
                         _judge(None if limit is None or math.isnan(e) else e <= limit)))
    d, p = m["ks"]
    out.append(Check("wait distribution (KS)", f"D {_num(d)}, p {_num(p, '.4f')}", f"p >= {th.ks_alpha:g}",
                     _judge(None if math.isnan(p) else p >= th.ks_alpha)))
    tp = m["throughput"]
    out.append(Check("cumulative throughput", f"RMSE {_pct(tp['best_rmse'])} at lag {tp['best_lag']:+d} bins "
                     f"(lag 0: {_pct(tp['rmse_lag0'])}; bin {tp['bin_ms'] / 1000:g} s)",
                     f"<= {100 * th.throughput_rmse:g} % (lag <= {th.max_lag_bins} bins)",
                     _judge(None if math.isnan(tp["best_rmse"]) else tp["best_rmse"] <= th.throughput_rmse)))
    for node, c in m["cpu"].items():
        if c.get("missing"):
            out.append(Check(f"CPU {node}", "n/a", "", INFO, c["missing"]))
            continue
        lim_rmse = th.cpu_rmse_median * c["median"]
        out.append(Check(f"CPU {node} sMAPE", _pct(c["smape"]), f"<= {100 * th.cpu_smape:g} %",
                         _judge(None if math.isnan(c["smape"]) else c["smape"] <= th.cpu_smape), c.get("host", "")))
        out.append(Check(f"CPU {node} Pearson r", _num(c["pearson"]), f">= {th.cpu_pearson:g}",
                         _judge(None if math.isnan(c["pearson"]) else c["pearson"] >= th.cpu_pearson),
                         "" if not math.isnan(c["pearson"]) else "a constant series has no correlation"))
        out.append(Check(f"CPU {node} RMSE", f"{_num(c['rmse'])} cores",
                         f"<= {100 * th.cpu_rmse_median:g} % of the real busy median {_num(c['median'])} = "
                         f"{_num(lim_rmse)} cores",
                         _judge(None if math.isnan(c["rmse"]) or c["median"] <= 0 else c["rmse"] <= lim_rmse),
                         "" if c["median"] > 0 else "the real median is 0: no relative limit"))
    return out


def overall(cs: list[Check]) -> str:
    """FAIL when any check fails, else PASS."""
    return FAIL if any(c.verdict == FAIL for c in cs) else PASS
