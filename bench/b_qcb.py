"""`.qcb` actions per second (no process at all) against end-to-end Perl spawns, same run."""

from __future__ import annotations

from contextlib import ExitStack

from b_e2e import daemon_rate
from common import Config, Section, Tree, fmt_mmm, interleave, median, ratios
from loops import auto_loop

CONC = 8


def run(cfg: Config) -> Section:
    section = Section(
        "qcb",
        "`.qcb` actions vs Perl spawns, end to end (events/s, conc 8)",
        ["loop", "perl events/s", "qcb events/s", "qcb / perl (per rep)"],
    )
    n, reps = cfg.pick(300, 1500), cfg.pick(1, 3)
    with ExitStack() as stack:
        trees = {
            (loop, kind): stack.enter_context(
                Tree(
                    loop,
                    {f"cb.{kind}": body},
                    f"cb.{kind} = complete-job-self\n",
                    supervisor_callback_concurrency=CONC,
                )
            )
            for loop in cfg.loops
            for kind, body in (("pl", "exit 0;\n"), ("qcb", "unblock-self\n"))
        }

        def measure(variant: str, rep: int) -> float:
            loop, kind = variant.split("/")
            return daemon_rate(trees[(loop, kind)], n, rep * n)[0]

        variants = [f"{loop}/{kind}" for loop in cfg.loops for kind in ("pl", "qcb")]
        res = interleave(reps, variants, measure)
    section.raw["rates"] = res
    for loop in cfg.loops:
        perl, qcb = res[f"{loop}/pl"], res[f"{loop}/qcb"]
        section.rows.append([loop, fmt_mmm(perl), fmt_mmm(qcb), fmt_mmm(ratios(qcb, perl))])
        section.loops.setdefault("qcb actions events/s", {})[loop] = median(qcb)
    auto = auto_loop() if f"{auto_loop()}/qcb" in res else cfg.loops[0]
    got = median(ratios(res[f"{auto}/qcb"], res[f"{auto}/pl"]))
    section.goal(f"report: .qcb runs vs Perl spawns ({auto})", f"{got:.1f}x", None)
    section.notes.append(
        "each event fires one callback: `unblock-self` interpreted in the daemon (an action "
        "record, no process), or `exit 0;` in Perl; timed from the first send to the last "
        "run finished"
    )
    return section
