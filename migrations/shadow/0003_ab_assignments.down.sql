-- The counts go: the sample-ratio check falls back to a 50/50 split.
alter table shadow.ab_tests drop column assigned_test, drop column assigned_control;
