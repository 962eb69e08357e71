/*
 * hello.c - smallest Tern guest.
 *
 * Prints a greeting, its arguments and the TERN_GREETING environment
 * variable (if set), then exits with the status given by argv[1] when
 * argv[1] is a decimal integer (default 0).  Used to check argv, environ,
 * stdout/stderr plumbing and exit-code propagation.
 *
 * Usage: hello [CODE] [ARGS...]
 */
#include <stdio.h>
#include <stdlib.h>

/* Parse a (possibly signed) decimal integer; return 1 on success. */
static int parse_int(const char *s, int *out)
{
    char *end;
    long v;

    if (s == NULL || *s == '\0')
        return 0;
    v = strtol(s, &end, 10);
    if (*end != '\0')
        return 0;
    *out = (int)v;
    return 1;
}

int main(int argc, char **argv)
{
    const char *greeting = getenv("TERN_GREETING");
    int code = 0;

    printf("hello from tern guest\n");
    printf("argc=%d\n", argc);
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    if (greeting != NULL)
        printf("TERN_GREETING=%s\n", greeting);
    else
        printf("TERN_GREETING is not set\n");

    if (argc > 1 && parse_int(argv[1], &code))
        printf("exiting with code %d\n", code);
    else
        code = 0;
    fflush(stdout);
    return code;
}
