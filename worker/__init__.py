"""The executor's processes and its operator commands.

`main` is the production worker (Temporal worker, PLANNED bridge, kill switch, presence,
metrics); `cli` the `hft-executor` command, which imports a command's module only when it
runs; `control` and `results` the operator commands (halt, resume, status, send-plan,
results). The developer tools (`dev`, `demo`, the embedded services, `inspect-plan`) live
apart, in devtools/, and nothing here imports them but `cli`'s lazy command table. See
docs/operations.md.
"""
