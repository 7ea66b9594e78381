-- Reverts credits 0001: drops the whole ledger, audit chain included. Take a backup first.
drop table if exists credits.audit_checkpoints;
drop table if exists credits.audit_logs;
drop function if exists credits.refuse_audit_change();
drop table if exists credits.idempotency_keys;
drop table if exists credits.reservations;
drop table if exists credits.credit_transactions;
drop table if exists credits.credit_accounts;
