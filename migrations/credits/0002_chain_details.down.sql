drop table if exists credits.chain_verifications;
alter table credits.audit_logs drop column if exists reserved_after;
