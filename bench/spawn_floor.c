/* bench/agent_vs_qga.py's spawn floor: fork + execvp + waitpid of `true`, N times in a
 * tight loop, in the guest.  Built statically on the host by the bench (gcc -static), so
 * it needs nothing from the guest's root.  Prints the mean microseconds per spawn.
 *
 *     spawn_floor N
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2 || atoi(argv[1]) < 1) {
        fprintf(stderr, "usage: spawn_floor N (N >= 1)\n");
        return 2;
    }
    int n = atoi(argv[1]);
    char *child[] = {"true", NULL};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            execvp(child[0], child);
            _exit(127);
        }
        int status;
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "spawn_floor: true failed (status %d)\n", status);
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3;
    printf("%.1f\n", us / n);
    return 0;
}
