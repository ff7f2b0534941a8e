/* The per-thread scratch buffer (scratch.h). */
#include "scratch.h"

#include <pthread.h>
#include <stdlib.h>

static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static _Thread_local void *buffer;
static _Thread_local size_t buffer_size;

static void make_key(void) { pthread_key_create(&key, free); }

void *scratch_for(size_t size) {
    if (size > buffer_size) {
        pthread_once(&once, make_key);
        free(buffer);
        buffer = aligned_alloc(64, (size + 63) & ~(size_t)63);
        buffer_size = buffer ? size : 0;
        pthread_setspecific(key, buffer); /* the key's destructor frees it at thread exit */
    }
    return buffer;
}

void scratch_done(void) {
    if (buffer_size > SCRATCH_KEEP) {
        free(buffer);
        buffer = NULL;
        buffer_size = 0;
        pthread_setspecific(key, NULL);
    }
}
