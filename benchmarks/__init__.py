"""Nyth benchmarks: each figure is reported next to a limit measured in the same run.

Run with ``scripts/bench {group-server,p2p,devnet,all}``. These are not tests: they
print what they measured and never fail on a threshold.
"""
