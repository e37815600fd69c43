"""The ExecutePlan workflow and the messages it exchanges.

`execute_plan` is the business process, deterministic and free of I/O; `events` holds the wire
models (the plan in, the result out) validated at the edge; `stages` the plain data passed to
and from the activities; `converter` and `codec` how Temporal stores them (pydantic JSON,
encrypted with AES-256-GCM). See docs/architecture.md section 2.
"""
