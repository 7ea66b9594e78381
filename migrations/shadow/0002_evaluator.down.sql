-- Going below 0002 would have to fold every evaluation's control into the candidate's rule id:
-- refuse when that would rewrite what a permanent record says it compared.
do $$
begin
  if exists (select 1 from shadow.evaluations where control_rule_id <> rule_id) then
    raise exception 'cannot revert shadow 0002: some evaluations compare two different rules, which 0001 cannot record';
  end if;
end $$;

drop index shadow.ab_observations_one_evaluation;
alter table shadow.ab_observations drop constraint ab_observations_counts, add column success boolean;
-- A batch cannot be split back into single observations: keep one row per batch, a success if most were.
update shadow.ab_observations set success = successes * 2 >= trials;
alter table shadow.ab_observations
  alter column success set not null,
  drop column successes,
  drop column trials,
  drop column evaluation_id;
alter table shadow.ab_tests drop column control_label, drop column test_label;

drop trigger evaluations_no_truncate on shadow.evaluations;
drop trigger evaluations_append_only on shadow.evaluations;
drop trigger rules_no_truncate on shadow.rules;
drop trigger rules_append_only on shadow.rules;
drop function shadow.refuse_change();

drop index shadow.evaluations_created;
alter table shadow.evaluations drop column traffic_sha256;
alter table shadow.evaluations drop constraint evaluations_recommendation;
update shadow.evaluations set recommendation = case recommendation
  when 'REJECT' then 'reject' when 'NEED_MORE_DATA' then 'inconclusive' else 'promote' end;
alter table shadow.evaluations add constraint evaluations_recommendation
  check (recommendation in ('promote', 'reject', 'inconclusive'));
alter table shadow.evaluations drop constraint evaluations_control_fkey;
alter table shadow.evaluations drop column control_rule_id;
alter table shadow.evaluations
  add constraint evaluations_rule_id_control_version_fkey foreign key (rule_id, control_version) references shadow.rules (id, version);
