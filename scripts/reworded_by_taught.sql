-- Where tailoring gains on the reworded test: each test question classed by whether the tailored round 1
-- taught its step chain (the same problem in other words), its share right in round 0 and after round 1
-- of each arm, per seed and then over seeds. Mistakes taught in round 1 are the round-0 model's greedy
-- mistakes, so "taught" classes the test questions that model was likely to get wrong.
-- tutorloop sql runs/reworded-s* runs/reworded-random-s* -f scripts/reworded_by_taught.sql
-- (a run whose name contains "random" is the random arm of the run named without "-random")
-- paired_t: the seeds' paired t statistic (df = seeds - 1; |t| > 2.09 is p < 0.05 at 20 seeds).
WITH taught AS (
  SELECT DISTINCT s.run AS seed_run, e.rationale AS chain
  FROM samples s JOIN examples e ON e.run = s.run AND e.example_id = s.example_id
  WHERE s.round = 1 AND s.source NOT LIKE 'replay%' AND s.task = 'explain' AND s.run NOT LIKE '%random%'),
graded AS (
  SELECT replace(a.run, '-random', '') AS seed_run, a.run LIKE '%random%' AS is_random, a.round,
         a.correct::int AS right_, CASE WHEN t.chain IS NOT NULL THEN 'chain taught by the tailored round'
                                        ELSE 'chain not taught' END AS class
  FROM attempts a JOIN examples e ON e.run = a.run AND e.example_id = a.example_id
  LEFT JOIN taught t ON t.seed_run = replace(a.run, '-random', '') AND t.chain = e.rationale
  WHERE a.split = 'test' AND a.round IN (0, 1)),
per_seed AS (
  SELECT seed_run, class, count(*) FILTER (WHERE round = 1 AND NOT is_random) AS questions,
         avg(right_) FILTER (WHERE round = 0 AND NOT is_random) AS round0,
         avg(right_) FILTER (WHERE round = 1 AND NOT is_random) AS tailored,
         avg(right_) FILTER (WHERE round = 1 AND is_random) AS random
  FROM graded GROUP BY ALL)
SELECT class, count(*) AS seeds, sum(questions) AS questions, round(avg(round0) * 100, 1) AS round0_pct,
       round(avg(tailored) * 100, 1) AS tailored_pct, round(avg(random) * 100, 1) AS random_pct,
       round(avg(tailored - random) * 100, 1) AS mean_diff_pts, round(stddev_samp(tailored - random) * 100, 1) AS sd_pts,
       round(avg(tailored - random) / (stddev_samp(tailored - random) / sqrt(count(*))), 2) AS paired_t,
       sum((tailored > random)::int) AS seeds_tailored_better, sum((tailored < random)::int) AS seeds_random_better
FROM per_seed GROUP BY class ORDER BY class DESC
