-- credits 0001: the prepaid credits ledger and its tamper-evident audit chain (DESIGN.md).
-- Amounts are integer credits. Balances never go negative: the conditional UPDATE in the ledger
-- is the first line of defence, the CHECK constraints here are the last.

create table credits.credit_accounts (
  tenant_id   text primary key
              constraint credit_accounts_tenant_id_format check (tenant_id ~ '^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$'),
  balance     bigint not null default 0,
  reserved    bigint not null default 0,
  -- Bumped on every change; guards the balance cache against older values.
  version     bigint not null default 0,
  -- Head of this tenant's audit chain, advanced in the same transaction as the balance.
  chain_seq   bigint not null default 0 constraint credit_accounts_chain_seq_nonnegative check (chain_seq >= 0),
  chain_head  bytea constraint credit_accounts_chain_head_length check (chain_head is null or octet_length(chain_head) = 32),
  created_at  timestamptz not null default now(),
  updated_at  timestamptz not null default now(),
  constraint credit_accounts_balance_nonnegative check (balance >= 0),
  constraint credit_accounts_reserved_within_balance check (reserved >= 0 and reserved <= balance)
);

create table credits.credit_transactions (
  id                    uuid primary key,
  tenant_id             text not null references credits.credit_accounts (tenant_id),
  kind                  text not null
                        constraint credit_transactions_kind check (kind in ('topup', 'consume', 'reserve', 'commit', 'cancel', 'expire')),
  amount                bigint not null constraint credit_transactions_amount_positive check (amount > 0),
  balance_after         bigint not null constraint credit_transactions_balance_after_nonnegative check (balance_after >= 0),
  reservation_id        uuid,
  idempotency_key_hash  bytea,
  description           text constraint credit_transactions_description_length check (length(description) <= 1000),
  -- Payment data: masked form (last 4) for display, AES-256-GCM envelope for the rest. Never the token.
  payment_masked        text,
  payment_encrypted     bytea,
  created_at            timestamptz not null default now()
);
create index credit_transactions_tenant_created on credits.credit_transactions (tenant_id, created_at, id);
create index credit_transactions_reservation on credits.credit_transactions (reservation_id) where reservation_id is not null;

create table credits.reservations (
  id               uuid primary key,
  tenant_id        text not null references credits.credit_accounts (tenant_id),
  amount           bigint not null constraint reservations_amount_positive check (amount > 0),
  committed_amount bigint constraint reservations_committed_within_amount check (committed_amount is null or (committed_amount > 0 and committed_amount <= amount)),
  status           text not null default 'held'
                   constraint reservations_status check (status in ('held', 'committed', 'cancelled', 'expired')),
  expires_at       timestamptz not null,
  created_at       timestamptz not null default now(),
  settled_at       timestamptz,
  constraint reservations_settled_when_not_held check ((status = 'held') = (settled_at is null))
);
create index reservations_tenant on credits.reservations (tenant_id, created_at);
create index reservations_held_expiry on credits.reservations (expires_at) where status = 'held';

create table credits.idempotency_keys (
  tenant_id     text not null,
  -- SHA-256 of the client's key: the key itself is never stored.
  key_hash      bytea not null constraint idempotency_keys_key_hash_length check (octet_length(key_hash) = 32),
  -- Fingerprint of the request, so the same key with other parameters is refused.
  request_hash  bytea not null constraint idempotency_keys_request_hash_length check (octet_length(request_hash) = 32),
  response      jsonb not null,
  created_at    timestamptz not null default now(),
  expires_at    timestamptz not null,
  primary key (tenant_id, key_hash)
);
create index idempotency_keys_expiry on credits.idempotency_keys (expires_at);

-- The audit chain, per tenant: hash = HMAC-SHA256(key[key_id], canonical(row) || prev_hash).
create table credits.audit_logs (
  id              bigserial primary key,
  tenant_id       text not null,
  seq             bigint not null constraint audit_logs_seq_positive check (seq >= 1),
  transaction_id  uuid,
  action          text not null,
  amount          bigint not null,
  balance_after   bigint not null,
  key_id          text not null,
  prev_hash       bytea not null constraint audit_logs_prev_hash_length check (octet_length(prev_hash) = 32),
  hash            bytea not null constraint audit_logs_hash_length check (octet_length(hash) = 32),
  created_at      timestamptz not null default now(),
  constraint audit_logs_tenant_seq unique (tenant_id, seq)
);

-- Signed chain heads, so that a cut-off tail or a chain rolled back to an older copy is detected.
create table credits.audit_checkpoints (
  id          bigserial primary key,
  created_at  timestamptz not null default now(),
  key_id      text not null,
  tenants     integer not null constraint audit_checkpoints_tenants_nonnegative check (tenants >= 0),
  rows_total  bigint not null constraint audit_checkpoints_rows_nonnegative check (rows_total >= 0),
  -- {"tenant": {"seq": n, "head": "hex"}, ...}
  heads       jsonb not null,
  signature   bytea not null constraint audit_checkpoints_signature_length check (octet_length(signature) = 32)
);

-- Append-only. Statement-level, because row triggers do not fire on TRUNCATE and a
-- statement that touches no row should still be refused. A superuser can disable triggers;
-- only the keyed hash and checkpoints held outside the database catch that.
create function credits.refuse_audit_change() returns trigger
language plpgsql as $$
begin
  raise exception '%.% is append-only: % is not allowed', tg_table_schema, tg_table_name, tg_op
    using errcode = 'insufficient_privilege';
end
$$;

create trigger audit_logs_append_only
  before update or delete or truncate on credits.audit_logs
  for each statement execute function credits.refuse_audit_change();

create trigger audit_checkpoints_append_only
  before update or delete or truncate on credits.audit_checkpoints
  for each statement execute function credits.refuse_audit_change();
