-- Version 4: the capture function plans without JIT compilation.
--
-- The planner cannot know that an UPDATE's old and new transition tables pair
-- one to one, so it estimates their join at n x n rows (200,000,000 for a
-- 200,000-row statement) and compiles the capture query with LLVM: about a
-- quarter of a second of every bulk statement, for a query that then runs
-- once.  A one-row statement was never compiled (its estimate is small), so
-- nothing but the wasted compilation goes away.

ALTER FUNCTION {function}() SET jit = off;
