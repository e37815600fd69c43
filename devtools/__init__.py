"""The developer tools: everything `hft-executor` runs on a developer's machine, nothing the production worker loads.

`dev` runs the whole stack embedded (`hft-executor dev`: Temporal dev server, nats-server, the
local cluster, funded wallets, the worker, `--demo N`); `services` the embedded servers it and
the tests, bench and chaos start as real processes (Temporal, NATS, localnet); `demo` the sample
plans against the local cluster's demo pool; `inspect_plan` `hft-executor inspect-plan`, the
transaction a plan would become, decoded, without signing or sending. They import the product
(worker, activities, workflows); the product imports none of them, and `hft-executor worker`
loads none of them (tests/test_cli_imports.py). See docs/operations.md.
"""
