-- Retire legacy_invoice_exports: the export queue the billing service replaced with invoice_exports.
--
-- [safedrop]
-- deployment = "legacy-invoice-exports"
-- keep = ["invoices", "invoice_exports"]
-- code_paths = ["https://github.com/acme/billing-service.git#main"]
-- approval = "required"
-- schedule = { cron = "0 4 * * SAT", timezone = "UTC", active = false }
-- readiness = { cron = "30 2 * * *", timezone = "UTC", active = true }
DROP TABLE legacy_invoice_exports;
