-- shadow 0002: what the evaluator and the A/B tests store (issue "Shadow evaluator and Bayesian A/B tests").
-- Rule versions and evaluations are permanent records: deployments are gated on them.

-- The control of an evaluation may be another rule than the candidate (e.g. a threshold rule
-- replaced by a rate limit), so it gets its own id.
alter table shadow.evaluations drop constraint evaluations_rule_id_control_version_fkey;
alter table shadow.evaluations add column control_rule_id text;
update shadow.evaluations set control_rule_id = rule_id;
alter table shadow.evaluations alter column control_rule_id set not null;
alter table shadow.evaluations
  add constraint evaluations_control_fkey foreign key (control_rule_id, control_version) references shadow.rules (id, version);

alter table shadow.evaluations drop constraint evaluations_recommendation;
update shadow.evaluations set recommendation = case recommendation
  when 'promote' then 'APPROVE_CANARY' when 'reject' then 'REJECT' else 'NEED_MORE_DATA' end;
alter table shadow.evaluations add constraint evaluations_recommendation
  check (recommendation in ('APPROVE_FULL_DEPLOYMENT', 'APPROVE_CANARY', 'REJECT', 'NEED_MORE_DATA'));

-- SHA-256 of the traffic file as read (compressed bytes for .gz): the same file gives the same hash.
alter table shadow.evaluations add column traffic_sha256 text
  constraint evaluations_traffic_sha256 check (traffic_sha256 ~ '^[0-9a-f]{64}$');
create index evaluations_created on shadow.evaluations (created_at desc);

create function shadow.refuse_change() returns trigger language plpgsql as $$
begin
  raise exception 'shadow.% is append-only: % refused', tg_table_name, tg_op
    using errcode = 'insufficient_privilege';
end $$;

create trigger rules_append_only before update or delete on shadow.rules
  for each row execute function shadow.refuse_change();
create trigger rules_no_truncate before truncate on shadow.rules
  for each statement execute function shadow.refuse_change();
create trigger evaluations_append_only before update or delete on shadow.evaluations
  for each row execute function shadow.refuse_change();
create trigger evaluations_no_truncate before truncate on shadow.evaluations
  for each statement execute function shadow.refuse_change();

-- A/B tests compare two named arms ('control' and 'test'); each arm says what it stands for.
alter table shadow.ab_tests add column control_label text, add column test_label text;
update shadow.ab_tests set control_label = variants[1], test_label = variants[2];
alter table shadow.ab_tests alter column control_label set not null, alter column test_label set not null;

-- Observations are recorded in batches (successes out of trials), optionally from an evaluation.
alter table shadow.ab_observations
  add column successes bigint,
  add column trials bigint,
  add column evaluation_id uuid references shadow.evaluations (id);
update shadow.ab_observations set successes = case when success then 1 else 0 end, trials = 1;
alter table shadow.ab_observations
  alter column successes set not null,
  alter column trials set not null,
  drop column success,
  add constraint ab_observations_counts check (trials >= 1 and successes >= 0 and successes <= trials);
-- One evaluation is recorded into a test's arm at most once.
create unique index ab_observations_one_evaluation on shadow.ab_observations (test_id, variant, evaluation_id)
  where evaluation_id is not null;
