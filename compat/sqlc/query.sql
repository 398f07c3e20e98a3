-- name: CreateAuthor :one
INSERT INTO authors (name, bio) VALUES (?, ?)
RETURNING *;

-- name: GetAuthor :one
SELECT * FROM authors
WHERE id = ? LIMIT 1;

-- name: GetAuthorByName :one
SELECT * FROM authors
WHERE name = ? LIMIT 1;

-- name: ListAuthors :many
SELECT * FROM authors
ORDER BY name;

-- name: ListAuthorsByIDs :many
SELECT * FROM authors
WHERE id IN (sqlc.slice('ids'))
ORDER BY name;

-- name: UpdateAuthorBio :exec
UPDATE authors SET bio = ?
WHERE id = ?;

-- name: DeleteAuthor :execrows
DELETE FROM authors
WHERE id = ?;

-- name: CreatePost :execlastid
INSERT INTO posts (author_id, title) VALUES (?, ?);

-- name: ListPostsWithAuthor :many
SELECT posts.id, posts.title, authors.name AS author
FROM posts JOIN authors ON authors.id = posts.author_id
ORDER BY posts.id;

-- name: CountPosts :one
SELECT count(*) FROM posts;
