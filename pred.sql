Music Music Music Music Music Music Music Music
�atabZoe distinct IvanovaatabCooking�
Music Music Music Music Music Music Music Music
major NOTk Indiak Indiak India
