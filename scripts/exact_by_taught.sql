-- Where selection gains and loses, on the pool: the round-2 exam of each arm (after its first tailored
-- or random round), split by what the tailored round did with a question in round 1.
-- tutorloop sql runs/onestep-s* runs/onestep-random-s* -f scripts/exact_by_taught.sql
-- taught: the tailored round taught it (a mistake, hardest first); mistake: a round-1 exam sample was wrong.
-- Per seed and class, the share of round-2 exam samples right in each arm and their difference; the
-- random arm's run name holds "random", and a seed's two arms share their round-1 exam (a fork).
-- paired_t: the seeds' paired t statistic (df = seeds - 1; |t| > 2.09 is p < 0.05 at 20 seeds).
WITH taught AS (
  SELECT DISTINCT run AS seed_run, example_id FROM samples
  WHERE round = 1 AND source NOT LIKE 'replay%' AND task = 'explain' AND run NOT LIKE '%random%'),
exam1 AS (
  SELECT run, example_id, min(correct::int) AS right1 FROM attempts
  WHERE split = 'train' AND round = 1 GROUP BY ALL),
exam2 AS (
  SELECT run, example_id, avg(correct::int) AS share2 FROM attempts
  WHERE split = 'train' AND round = 2 GROUP BY ALL),
classed AS (
  SELECT replace(e1.run, '-random', '') AS seed_run, e1.run LIKE '%random%' AS is_random, e2.share2,
         CASE WHEN t.example_id IS NOT NULL THEN 'taught' WHEN e1.right1 = 0 THEN 'mistake, not taught'
              ELSE 'right in round 1' END AS class
  FROM exam1 e1 JOIN exam2 e2 USING (run, example_id)
  LEFT JOIN taught t ON t.seed_run = replace(e1.run, '-random', '') AND t.example_id = e1.example_id),
per_seed AS (
  SELECT seed_run, class, count(*) FILTER (WHERE NOT is_random) AS questions,
         avg(share2) FILTER (WHERE NOT is_random) AS tailored, avg(share2) FILTER (WHERE is_random) AS random
  FROM classed GROUP BY ALL)
SELECT class, count(*) AS seeds, sum(questions) AS questions, round(avg(tailored) * 100, 1) AS tailored_pct,
       round(avg(random) * 100, 1) AS random_pct, round(avg(tailored - random) * 100, 1) AS mean_diff_pts,
       round(stddev_samp(tailored - random) * 100, 1) AS sd_pts,
       round(avg(tailored - random) / (stddev_samp(tailored - random) / sqrt(count(*))), 2) AS paired_t,
       sum((tailored > random)::int) AS seeds_tailored_better, sum((tailored < random)::int) AS seeds_random_better
FROM per_seed GROUP BY class ORDER BY class DESC
