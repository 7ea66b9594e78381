-- shadow 0001: security rules, their deployments, evaluations, A/B tests and canary runs (DESIGN.md).

create table shadow.rules (
  id          text not null constraint rules_id_format check (id ~ '^[a-z0-9][a-z0-9._-]{0,127}$'),
  version     integer not null constraint rules_version_positive check (version >= 1),
  definition  jsonb not null,
  description text,
  created_at  timestamptz not null default now(),
  primary key (id, version)
);

-- The pointer the services read: which version is live, which is in canary and at what share.
create table shadow.rule_deployments (
  rule_id           text primary key,
  active_version    integer not null,
  previous_version  integer,
  canary_version    integer,
  canary_percent    integer not null default 0
                    constraint rule_deployments_canary_percent check (canary_percent between 0 and 100),
  updated_at        timestamptz not null default now(),
  foreign key (rule_id, active_version) references shadow.rules (id, version),
  foreign key (rule_id, previous_version) references shadow.rules (id, version),
  foreign key (rule_id, canary_version) references shadow.rules (id, version),
  constraint rule_deployments_canary_consistent check ((canary_version is null) = (canary_percent = 0))
);

create table shadow.evaluations (
  id                 uuid primary key,
  rule_id            text not null,
  control_version    integer not null,
  candidate_version  integer not null,
  dataset            text not null,
  samples            bigint not null constraint evaluations_samples_nonnegative check (samples >= 0),
  metrics            jsonb not null,
  -- promote | reject | inconclusive
  recommendation     text not null constraint evaluations_recommendation check (recommendation in ('promote', 'reject', 'inconclusive')),
  conclusive         boolean not null,
  created_at         timestamptz not null default now(),
  foreign key (rule_id, control_version) references shadow.rules (id, version),
  foreign key (rule_id, candidate_version) references shadow.rules (id, version)
);
create index evaluations_rule on shadow.evaluations (rule_id, candidate_version, created_at);

create table shadow.ab_tests (
  id                uuid primary key,
  name              text not null unique,
  variants          text[] not null constraint ab_tests_two_variants check (cardinality(variants) >= 2),
  min_sample_size   integer not null constraint ab_tests_min_sample_positive check (min_sample_size >= 1),
  confidence_level  numeric not null constraint ab_tests_confidence check (confidence_level > 0.5 and confidence_level < 1),
  status            text not null default 'running' constraint ab_tests_status check (status in ('running', 'concluded', 'stopped')),
  winner            text,
  created_at        timestamptz not null default now(),
  concluded_at      timestamptz
);

create table shadow.ab_observations (
  id          bigserial primary key,
  test_id     uuid not null references shadow.ab_tests (id),
  variant     text not null,
  success     boolean not null,
  created_at  timestamptz not null default now()
);
create index ab_observations_test on shadow.ab_observations (test_id, variant);

create table shadow.canary_runs (
  id             uuid primary key,
  rule_id        text not null,
  from_version   integer not null,
  to_version     integer not null,
  evaluation_id  uuid references shadow.evaluations (id),
  state          text not null constraint canary_runs_state check (state in ('pending', 'progressing', 'paused', 'promoted', 'rolled_back', 'aborted')),
  percent        integer not null default 0 constraint canary_runs_percent check (percent between 0 and 100),
  created_at     timestamptz not null default now(),
  updated_at     timestamptz not null default now(),
  foreign key (rule_id, from_version) references shadow.rules (id, version),
  foreign key (rule_id, to_version) references shadow.rules (id, version)
);
-- At most one live canary per rule.
create unique index canary_runs_one_live on shadow.canary_runs (rule_id) where state in ('pending', 'progressing', 'paused');

create table shadow.canary_events (
  id          bigserial primary key,
  run_id      uuid not null references shadow.canary_runs (id),
  at          timestamptz not null default now(),
  kind        text not null,
  from_state  text,
  to_state    text,
  percent     integer,
  detail      jsonb not null default '{}'::jsonb
);
create index canary_events_run on shadow.canary_events (run_id, at);
