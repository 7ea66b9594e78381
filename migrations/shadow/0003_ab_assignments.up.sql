-- The units `ab assign` gave each arm: the split the sample-ratio check expects. Thompson sampling
-- splits unevenly by design, so a check against 50/50 flagged healthy tests; against the split
-- actually assigned, a mismatch means units were lost (or recorded twice) on one side.
alter table shadow.ab_tests
  add column assigned_control bigint not null default 0 constraint ab_tests_assigned_control check (assigned_control >= 0),
  add column assigned_test bigint not null default 0 constraint ab_tests_assigned_test check (assigned_test >= 0);
