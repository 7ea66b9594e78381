-- credits 0002: what the ledger and verify-chain need beyond 0001.

-- A reservation changes what is available without changing the balance, so the chain records
-- the reserved figure too (it is part of the signed row).
alter table credits.audit_logs
  add column reserved_after bigint not null default 0
  constraint audit_logs_reserved_after_nonnegative check (reserved_after >= 0);

-- Every verify-chain run, so `status` can report the chain errors found by the last one.
create table credits.chain_verifications (
  id              bigserial primary key,
  started_at      timestamptz not null,
  finished_at     timestamptz not null default now(),
  ok              boolean not null,
  tenants_checked bigint not null,
  rows_checked    bigint not null,
  broken_count    integer not null,
  -- [{"tenant_id", "seq", "reason"}]: the first broken link of each tenant
  broken          jsonb not null default '[]'::jsonb,
  checkpoint_id   bigint references credits.audit_checkpoints (id)
);
create index chain_verifications_finished on credits.chain_verifications (finished_at desc);
