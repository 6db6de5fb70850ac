-- Tailored against random per distinct synthetic problem (its gold rationale is the step chain), not per
-- test question: on one-step problems the 200 test questions are 20 chains in different words.
-- tutorloop sql runs/onestep-s* runs/onestep-random-s* -f scripts/exact_by_chain.sql
-- (a run whose name contains "random" is the random arm; per chain, the share of its questions and seeds right)
WITH per AS (
  SELECT CASE WHEN a.run LIKE '%random%' THEN 'random' ELSE 'tailored' END AS arm, a.round, e.rationale AS chain,
         avg(a.correct::int) AS share
  FROM attempts a JOIN examples e ON e.example_id = a.example_id AND e.run = a.run
  WHERE a.split = 'test' AND a.round >= 1 GROUP BY ALL)
SELECT t.round, count(*) AS chains, sum((t.share > r.share)::int) AS tailored_better,
       sum((t.share < r.share)::int) AS random_better, round(avg(t.share - r.share) * 100, 1) AS mean_diff_pts
FROM per t JOIN per r ON t.chain = r.chain AND t.round = r.round AND t.arm = 'tailored' AND r.arm = 'random'
GROUP BY t.round ORDER BY t.round
