-- Retire the deprecated credit-allocation tables (the team's guide, step "Drop tables").
--
-- [safedrop]
-- # The deployments: credit-allocations (manual), credit-allocations-scheduled, credit-allocations-readiness.
-- deployment = "credit-allocations"
-- # Must exist before the drop and be intact after it.
-- keep = ["credits", "credit_transactions", "credit_purchases", "credit_usage", "credit_configurations"]
-- # The application's repository, cloned (shallow) at run time wherever the run runs; a private one
-- # reads its token or SSH key from the Secret block named by code_secret_block. Replace with yours.
-- code_paths = ["https://github.com/acme/wrapper-backend.git#main"]
-- # Suspended after the prechecks and the backup until an operator approves the plan in the UI.
-- approval = "required"
-- # The maintenance window; inactive until an operator resumes it (`approval = "skip"` in here only
-- # for a window nobody attends).
-- schedule = { cron = "0 3 * * SUN", timezone = "UTC", active = false }
-- # The nightly dry run: would the drop go ahead, and were the targets read or written since?
-- readiness = { cron = "0 2 * * *", timezone = "UTC", active = true }
DROP TABLE IF EXISTS "credit_allocation_transactions" CASCADE;
DROP TABLE IF EXISTS "credit_allocations" CASCADE;
