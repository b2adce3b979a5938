SELECT genre, sum(members) FROM band GROUP BY genre	music_festival
SELECT min(salary), max(salary) FROM employee WHERE title = 'Clerk'	company
SELECT genre FROM band ORDER BY formed_year DESC	music_festival
SELECT genre FROM book ORDER BY price ASC LIMIT 4	bookstore
