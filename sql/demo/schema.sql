-- The demo database: shaped like the team's guide. Five credit tables that must survive (with sample
-- data) and the two deprecated, empty targets. Nothing else references the targets.
CREATE TABLE tenants (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credits (
    id          bigserial PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id),
    balance     numeric(12, 2) NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_transactions (
    id          bigserial PRIMARY KEY,
    credit_id   bigint NOT NULL REFERENCES credits (id),
    amount      numeric(12, 2) NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('grant', 'spend', 'refund')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_transactions_credit_id_idx ON credit_transactions (credit_id);

CREATE TABLE credit_purchases (
    id           bigserial PRIMARY KEY,
    tenant_id    bigint NOT NULL REFERENCES tenants (id),
    amount       numeric(12, 2) NOT NULL,
    price_cents  integer NOT NULL,
    purchased_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_usage (
    id          bigserial PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id),
    credit_id   bigint NOT NULL REFERENCES credits (id),
    feature     text NOT NULL,
    amount      numeric(12, 2) NOT NULL,
    used_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_configurations (
    id                 serial PRIMARY KEY,
    tenant_id          bigint NOT NULL UNIQUE REFERENCES tenants (id),
    monthly_allowance  numeric(12, 2) NOT NULL DEFAULT 100,
    rollover           boolean NOT NULL DEFAULT false
);

-- Deprecated: superseded by credit_usage. Empty since the allocation feature was retired.
CREATE TABLE credit_allocations (
    id            bigserial PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES tenants (id),
    credit_id     bigint NOT NULL REFERENCES credits (id),
    amount        numeric(12, 2) NOT NULL,
    period_start  date NOT NULL,
    period_end    date NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (period_end >= period_start)
);
CREATE INDEX credit_allocations_tenant_id_idx ON credit_allocations (tenant_id);

CREATE TABLE credit_allocation_transactions (
    id             bigserial PRIMARY KEY,
    allocation_id  bigint NOT NULL REFERENCES credit_allocations (id) ON DELETE CASCADE,
    amount         numeric(12, 2) NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_allocation_transactions_allocation_id_idx
    ON credit_allocation_transactions (allocation_id);

INSERT INTO tenants (name) SELECT 'tenant ' || g FROM generate_series(1, 25) g;
INSERT INTO credits (tenant_id, balance) SELECT id, 1000 + id * 10 FROM tenants;
INSERT INTO credit_configurations (tenant_id, monthly_allowance, rollover)
    SELECT id, 100 * (1 + id % 3), id % 2 = 0 FROM tenants;
INSERT INTO credit_purchases (tenant_id, amount, price_cents)
    SELECT 1 + g % 25, 50 * (1 + g % 4), 500 * (1 + g % 4) FROM generate_series(1, 120) g;
INSERT INTO credit_transactions (credit_id, amount, kind)
    SELECT 1 + g % 25, (g % 17) + 1, (ARRAY['grant', 'spend', 'refund'])[1 + g % 3]
    FROM generate_series(1, 600) g;
INSERT INTO credit_usage (tenant_id, credit_id, feature, amount)
    SELECT 1 + g % 25, 1 + g % 25, (ARRAY['api', 'export', 'seats'])[1 + g % 3], (g % 9) + 1
    FROM generate_series(1, 400) g;
ANALYZE;
