"""TARS-1002 patcher, full equivalence run (issue 17): every rewrite against its original, live.

A throwaway Prometheus loads TARS-1002's rule file together with rule files in the shapes operators run
(the node-exporter mixin for plain hosts, the same mixin and kube-prometheus' node recording rules for
Kubernetes nodes, kubernetes-mixin-shaped API rules with static labels, a site's legacy file), scrapes
three real node_exporters (Debian ``prometheus-node-exporter``) as ``node`` and ``node-exporter`` and the
T.A.R.S. exporter (20 agents x 3 regions, as the sandbox), and evaluates every group at its own
interval (TARS-1002's 10 s to 60 s). Every rewrite of every panel query of the four dashboards is
compared with its original at 5 evaluation instants for every combination of its variables' values
(each value, All, and a value matching nothing), and each rewrite that selects its rule's series by
matchers is also checked without them (the control: it must come out wrong).

    python benchmarks/tars-1002-grafana_equivalence.py            # about 10 min on 2 shared cores
    python benchmarks/tars-1002-grafana_equivalence.py --quick    # the tests' short run (about 1 min)

Writes benchmarks/tars-1002-grafana_equivalence_results.{md,json} (or --out PREFIX); exit 1 when a
rewrite is wrong or could not be verified.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tars_1002_grafana import equivalence

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the tests' short run: every group every 3 s, 3 instants")
    ap.add_argument("--workdir", type=Path, help="keep Prometheus' and the exporters' files here")
    ap.add_argument("--out", type=Path, default=HERE / "tars-1002-grafana_equivalence_results")
    ns = ap.parse_args()
    options = equivalence.Options() if ns.quick else equivalence.Options.full()
    with tempfile.TemporaryDirectory(prefix="tars-equivalence-") as tmp:
        report = equivalence.run(ns.workdir or Path(tmp), options)
    command = "python benchmarks/tars-1002-grafana_equivalence.py" + (" --quick" if ns.quick else "")
    for path in equivalence.write(report, ns.out, command):
        print(f"wrote {path}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
