"""What the workflow's steps do, and the Solana side they stand on.

`execution` defines the activities (execute, resolve_record, confirm, settle, release_wallet,
publish); `dispatch` owns a plan's hot path (lease, build, policy, sign, record, the send gate,
the send). Beside them: the transaction builder (`build`), the plan policy, the key store,
the wallet pool, the plan records and the result publisher. The clients that speak Solana's
wire live in `venue/`. See docs/architecture.md sections 2 and 9-13.
"""
