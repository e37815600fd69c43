"""`hft-executor bench`: plan-to-wire latency, CPU per plan and capacity, durable against direct.

`command` runs one benchmark on an embedded stack; `compare` runs this tree and a git ref in
turn (`--compare`); `profile` attributes the durable path's CPU (`--profile`). See
docs/performance.md.
"""
