-- Reverts shadow 0001: drops rules, deployments, evaluations, A/B tests and canary history.
drop table if exists shadow.canary_events;
drop table if exists shadow.canary_runs;
drop table if exists shadow.ab_observations;
drop table if exists shadow.ab_tests;
drop table if exists shadow.evaluations;
drop table if exists shadow.rule_deployments;
drop table if exists shadow.rules;
