-- Retire the deprecated credit-allocation tables (the team's guide, step "Drop tables").
DROP TABLE IF EXISTS "credit_allocation_transactions" CASCADE;
DROP TABLE IF EXISTS "credit_allocations" CASCADE;
