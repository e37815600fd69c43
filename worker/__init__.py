"""The executor's processes and its operator commands.

`main` is the production worker (Temporal worker, PLANNED bridge, kill switch, presence,
metrics); `cli` the `hft-executor` command, which imports a command's module only when it
runs; `control` and `results` the operator commands (halt, resume, status, send-plan,
results); `dev`, `demo` and `services` the embedded developer stack (Temporal dev server,
nats-server, the local cluster), which the production worker never imports. See
docs/operations.md.
"""
