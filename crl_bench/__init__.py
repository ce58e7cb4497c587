"""The orchestration on top of the core (`harness`) and the methods (`baselines`, `rl`): the
`crl-bench` CLI, `bench`, the analyses, the leaderboard, figures, report and perf."""
