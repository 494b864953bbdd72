/* udpecho PORT FILE: answer every UDP datagram on PORT with FILE's contents (read at start).
 * The test images' UDP service: busybox has no UDP server that answers. Built static. */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: udpecho PORT FILE\n");
        return 2;
    }
    char reply[512];
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    size_t len = fread(reply, 1, sizeof reply, f);
    fclose(f);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("bind");
        return 1;
    }
    for (;;) {
        char buf[2048];
        struct sockaddr_in peer;
        socklen_t peer_len = sizeof peer;
        if (recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &peer_len) < 0)
            continue;
        sendto(fd, reply, len, 0, (struct sockaddr *)&peer, peer_len);
    }
}
