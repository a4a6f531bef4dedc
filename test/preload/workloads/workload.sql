-- SQL workload for the preload tests: thousands of rows, queries, indexes, group by.
CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val REAL, data TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30000)
INSERT INTO t SELECT x, x % 97, 'name' || (x * 7919 % 20011), (x * 31 % 1000) / 7.0,
                     substr(hex(x * x * 2654435761), 1, 1 + x % 40) FROM c;
SELECT count(*), sum(grp), min(name), max(name), round(sum(val), 3) FROM t;
CREATE INDEX t_name ON t(name);
CREATE INDEX t_grp_val ON t(grp, val);
SELECT grp, count(*), round(avg(val), 4), max(name) FROM t GROUP BY grp ORDER BY grp LIMIT 20;
SELECT name, count(*) AS n FROM t GROUP BY name HAVING n > 1 ORDER BY n DESC, name LIMIT 15;
SELECT a.id, b.id FROM t a JOIN t b ON a.name = b.name AND a.id < b.id
 ORDER BY a.id, b.id LIMIT 10;
UPDATE t SET val = val * 2, data = data || data WHERE grp < 10;
DELETE FROM t WHERE id % 5 = 0;
SELECT count(*), round(sum(val), 3), sum(length(data)) FROM t;
SELECT group_concat(name, ',') FROM (SELECT name FROM t ORDER BY name, id LIMIT 40);
CREATE TABLE u AS SELECT grp, group_concat(data, '') AS blob FROM t GROUP BY grp;
SELECT grp, length(blob) FROM u ORDER BY length(blob) DESC, grp LIMIT 5;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)
INSERT INTO t(grp, name, val, data) SELECT x % 13, printf('%.*c', 1 + x % 300, 'y'), x, 'z' FROM c;
SELECT grp, count(*), sum(length(name)) FROM t GROUP BY grp ORDER BY 3 DESC, grp LIMIT 8;
SELECT count(DISTINCT name), count(DISTINCT data) FROM t;
DROP INDEX t_grp_val;
SELECT * FROM t WHERE name BETWEEN 'name100' AND 'name101' ORDER BY id LIMIT 5;
PRAGMA integrity_check;
