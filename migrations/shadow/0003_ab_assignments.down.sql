-- The counts are what the sample-ratio check reads for tests fed by `ab assign`: refuse to drop
-- them silently (a test would fall back to a 50/50 check its Thompson split fails).
do $$
begin
  if exists (select 1 from shadow.ab_tests where assigned_control > 0 or assigned_test > 0) then
    raise exception 'cannot revert shadow 0003: some A/B tests have units counted by ab assign, which 0002 cannot hold';
  end if;
end $$;

alter table shadow.ab_tests drop column assigned_test, drop column assigned_control;
