"""The ExecutePlan workflow's activities, and nothing else.

`execution.ExecutionActivities` implements `workflows.plan_activities.PlanActivities`: execute,
resolve_record, confirm, settle, release_wallet and publish, each a thin call into
`executor/`, which does the work. See docs/architecture.md sections 2 and 9.
"""
