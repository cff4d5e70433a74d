-- The poll's comment reader, joined into activity.sql when comment sources are configured: for each key of
-- %(comment_keys)s (regex-escaped by the caller), its raw value in the SQL comment at the start or at the end of the
-- session's query, read on the server so that query texts never travel. The client decodes it (exporter/sources.py).
-- It adds the columns w.query_cut and v.comment_values. Each step, and why:
-- * g: the grammar, once. A value is sqlcommenter's `'...'` (\ escapes; no raw comma: sqlcommenter URL-encodes
--   them) or marginalia's `:...` (up to the next comma); a pair is `key=VALUE` or `key:VALUE` with white space around
--   it; a comment's body must be a list `pair(,pair)*`. So every comma of a body separates pairs, a key found after a
--   comma is a real key (never text inside another key's value), and an unterminated quote refuses the whole comment.
-- * w: only for sessions that are not idle (an idle session's last comment is stale). query_cut: the text is at
--   least track_activity_query_size - 4 bytes (%(cut_bytes)s); PostgreSQL keeps size - 1 bytes, shortened to a
--   character boundary, so such a text may have been cut: its end is not the query's end, the comment at the end is
--   not read, and the client counts the session as missed instead of trusting whatever ends the text.
-- * x: the first and the last %(comment_bytes)s bytes, through textsend() and encode(..., 'escape'): bytes, then
--   ASCII (bytes >= 0x80 as \ooo, backslashes doubled). A session of a database in another encoding can leave invalid
--   UTF-8 in its text; no character function walks it and nothing raises. head: the text starts (after white space)
--   with /* and the first */ closes it; tail: the text ends with */ (then white space or ;) and the body runs back
--   to its /*. C-comment regexes without lookahead: linear time on hostile text. Only texts holding */ get here.
-- * c: a body holding /* (a nested comment) or that is not a well-formed list is dropped.
-- * v: the value of each key: the first pair with that key in the comment at the start, else in the one at the
--   end, cut at %(value_chars)s characters (the client refuses one that long); NULL when neither comment was read.
  CROSS JOIN (SELECT s.qval, '^' || s.pair || '(?:,' || s.pair || ')*$' AS list
                FROM (SELECT v.qval, '[[:space:]]*[^=:,''[:space:]\\]+(?:=' || v.qval || '|:[^,]*)[[:space:]]*' AS pair
                        FROM (SELECT '''(?:[^'',\\]|\\[0-7][0-7][0-7]|\\\\(?:[^,\\]|\\\\|\\[0-7][0-7][0-7]))*'''
                                     AS qval) AS v) AS s) AS g
  CROSS JOIN LATERAL (
        SELECT a.state IS DISTINCT FROM 'idle' AND octet_length(a.query) >= %(cut_bytes)s AS query_cut,
               CASE WHEN a.state IS DISTINCT FROM 'idle' THEN pg_catalog.textsend(a.query) END AS q
        OFFSET 0) AS w
  LEFT JOIN LATERAL (
        SELECT substring(encode(substring(w.q FROM 1 FOR %(comment_bytes)s), 'escape')
                         FROM '^[[:space:]]*/\*([^*]*(?:\*+[^*/][^*]*)*)\*+/') AS head,
               CASE WHEN NOT w.query_cut
                    THEN substring(encode(substring(w.q FROM greatest(octet_length(w.q) - %(comment_bytes)s + 1, 1)),
                                          'escape')
                                   FROM '/\*([^*]*(?:\*+[^*/][^*]*)*)\*+/[[:space:];]*$')
               END AS tail
         WHERE position('\x2a2f'::bytea IN w.q) > 0
        OFFSET 0) AS x ON true
  LEFT JOIN LATERAL (
        SELECT CASE WHEN strpos(x.head, '/*') = 0 AND x.head ~ g.list THEN x.head END AS head,
               CASE WHEN strpos(x.tail, '/*') = 0 AND x.tail ~ g.list THEN x.tail END AS tail
         WHERE x.head IS NOT NULL OR x.tail IS NOT NULL
        OFFSET 0) AS c ON true
  LEFT JOIN LATERAL (
        SELECT ARRAY(SELECT left(coalesce(substring(c.head FROM k.re), substring(c.tail FROM k.re)), %(value_chars)s)
                       FROM (SELECT '(?:^|,)[[:space:]]*' || k.key || '(=' || g.qval || '|:[^,]*)' AS re, k.i
                               FROM unnest(%(comment_keys)s::text[]) WITH ORDINALITY AS k(key, i)) AS k
                      ORDER BY k.i) AS comment_values
         WHERE c.head IS NOT NULL OR c.tail IS NOT NULL) AS v ON true
