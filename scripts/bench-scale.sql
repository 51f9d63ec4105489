-- Loads a large library and task history into a bench database, fast
-- (generate_series in SQL, no round trip per row). Used by scripts/bench-scale;
-- run it only on a database of its own, never on the running system's.
--
--   psql -v titles=1000000 -v tasks=10000000 -v history=1000000 -f scripts/bench-scale.sql DB
--
-- Titles: ISBNs 97951xxxxxxxC (valid check digits, apart from the seed's
-- 97884 ones), titles built from a small Spanish vocabulary (so "de", "la",
-- "el" are in most of them, as in a real catalogue) plus an invented proper
-- name from three syllables (about 14,000 of them, so such a word is rare),
-- one or two copies each. Tasks: finished over the last 6 days (inside the
-- default 7-day retention, so the janitor leaves them alone; 96 %
-- succeeded, 3 % failed, 1 % cancelled), ids that grow with time. History:
-- settled operations spread over the last 24 hours.
\set ON_ERROR_STOP on
\timing on

-- One word of an array, picked by a hash of (seed, i): the same on every run.
CREATE OR REPLACE FUNCTION pg_temp.pick(words text[], i bigint, seed text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT words[1 + (hashtext(seed || i::text) & 2147483647) % cardinality(words)] $$;

-- ISBN 97951 + seven digits of i + the check digit (weights 1 3 1 3 ...;
-- the prefix's digits weigh 9 + 21 + 9 + 15 + 1 = 55).
CREATE OR REPLACE FUNCTION pg_temp.isbn(i bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT '97951' || lpad(i::text, 7, '0')
        || ((10 - (55 + 3 * (i / 1000000 % 10) + (i / 100000 % 10) + 3 * (i / 10000 % 10)
                      + (i / 1000 % 10) + 3 * (i / 100 % 10) + (i / 10 % 10) + 3 * (i % 10)) % 10) % 10)::text $$;

INSERT INTO branches (code, name) VALUES ('central', 'Biblioteca Central'), ('norte', 'Biblioteca Norte')
    ON CONFLICT DO NOTHING;

INSERT INTO titles (isbn, title, authors, published_year)
SELECT pg_temp.isbn(i),
       CASE i % 5
         WHEN 0 THEN f.det || ' ' || f.noun || ' de la ' || f.noun2
         WHEN 1 THEN f.det || ' ' || f.noun || ' ' || f.adj
         WHEN 2 THEN f.opener || ' de ' || f.name
         WHEN 3 THEN f.det || ' ' || f.noun || ' ' || f.adj || ' de ' || f.name
         ELSE f.name || ' y el ' || f.noun3
       END,
       ARRAY[pg_temp.pick('{Alba,Bruno,Celia,Darío,Emma,Fermín,Gloria,Hugo,Irene,Julián,Laura,Mateo,Nora,Óscar,Paula}', i, 'fn')
             || ' ' || pg_temp.pick('{Aranda,Benítez,Cordero,Duarte,Escobar,Fuentes,Galán,Herrero,Iglesias,Jurado,Lozano,Medina}', i, 'sn')],
       1900 + (i % 125)::int
  FROM generate_series(1, :titles) i,
  LATERAL (SELECT
      CASE WHEN i % 2 = 0 THEN 'La' ELSE 'El' END AS det,
      CASE WHEN i % 2 = 0
           THEN pg_temp.pick('{casa,sombra,ciudad,noche,montaña,memoria,isla,carta,voz,frontera,orilla,luz,tormenta,biblioteca,estación,puerta,llave,ventana,costa,llanura,torre,huella,promesa,herida,lluvia,ruta}', i, 'nf')
           ELSE pg_temp.pick('{jardín,viento,río,silencio,espejo,secreto,camino,invierno,mar,puente,desierto,reloj,faro,bosque,verano,laberinto,horizonte,puerto,mapa,cuaderno,regreso,sueño,eco,valle,volcán,olvido}', i, 'nm')
      END AS noun,
      pg_temp.pick('{casa,sombra,ciudad,noche,montaña,memoria,isla,carta,frontera,orilla,tormenta,biblioteca,estación,puerta,llave,ventana,costa,torre,promesa,lluvia}', i, 'n2') AS noun2,
      pg_temp.pick('{jardín,viento,río,silencio,espejo,camino,invierno,mar,puente,desierto,reloj,faro,bosque,verano,laberinto,puerto}', i, 'n3') AS noun3,
      CASE WHEN i % 2 = 0
           THEN pg_temp.pick('{olvidada,oscura,última,secreta,perdida,blanca,lejana,dormida,infinita,pequeña,antigua,callada}', i, 'a')
           ELSE pg_temp.pick('{olvidado,oscuro,último,secreto,perdido,blanco,lejano,dormido,infinito,pequeño,antiguo,callado}', i, 'a')
      END AS adj,
      pg_temp.pick('{Crónica,Historia,Memorias,Elogio,Diario,Tratado}', i, 'o') AS opener,
      initcap(pg_temp.pick('{ta,lo,mi,ra,ve,su,no,ca,di,pe,ro,za,be,gu,fi,le,mo,sa,ti,nu,ja,ke,do,bri}', i, 's1')
              || pg_temp.pick('{ta,lo,mi,ra,ve,su,no,ca,di,pe,ro,za,be,gu,fi,le,mo,sa,ti,nu,ja,ke,do,bri}', i, 's2')
              || pg_temp.pick('{ta,lo,mi,ra,ve,su,no,ca,di,pe,ro,za,be,gu,fi,le,mo,sa,ti,nu,ja,ke,do,bri}', i, 's3')
              || pg_temp.pick('{n,r,s,l,"","",""}', i, 's4')) AS name
  ) f
ON CONFLICT DO NOTHING;

INSERT INTO copies (isbn, branch, barcode)
SELECT pg_temp.isbn(i), CASE WHEN k = 1 THEN 'central' ELSE 'norte' END, 'S' || i || '-' || k
  FROM generate_series(1, :titles) i, generate_series(1, 1 + (i % 2)::int) k
ON CONFLICT DO NOTHING;

-- Ids grow with time (like UUIDv7), so the primary key is filled in order.
INSERT INTO tasks (id, action, payload, state, attempts, created_at, started_at, finished_at,
                   updated_at, error, error_code, result)
SELECT ('b0' || lpad(to_hex(g), 30, '0'))::uuid,
       (ARRAY['sum', 'upper', 'fib', 'echo', 'wordcount'])[1 + (g / 7) % 5],
       '[1, 2, 3]'::jsonb,
       CASE WHEN g % 100 < 96 THEN 'succeeded' WHEN g % 100 < 99 THEN 'failed' ELSE 'cancelled' END,
       1,
       t, t + interval '2 ms', t + interval '4 ms', t + interval '4 ms',
       CASE WHEN g % 100 BETWEEN 96 AND 98 THEN 'bad input' END,
       CASE WHEN g % 100 BETWEEN 96 AND 98 THEN 'invalid_payload' WHEN g % 100 = 99 THEN 'cancelled' END,
       CASE WHEN g % 100 < 96 THEN '6'::jsonb END
  FROM generate_series(1, :tasks) g,
       LATERAL (SELECT now() - interval '6 days' + (g * (interval '6 days' / :tasks)) AS t) c;

INSERT INTO circulation_history (at, operation_id, kind, outcome, reason, branch)
SELECT now() - (g * (interval '24 hours' / :history)),
       ('c0' || lpad(to_hex(g), 30, '0'))::uuid,
       (ARRAY['loan', 'loan', 'renewal', 'return'])[1 + g % 4],
       CASE WHEN g % 10 = 0 THEN 'rejected' ELSE 'applied' END,
       CASE WHEN g % 10 = 0 THEN 'not_available' END,
       CASE WHEN g % 3 = 0 THEN 'norte' ELSE 'central' END
  FROM generate_series(1, :history) g;

VACUUM ANALYZE titles;
VACUUM ANALYZE copies;
VACUUM ANALYZE tasks;
VACUUM ANALYZE circulation_history;
