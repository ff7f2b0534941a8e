/* One per-thread scratch buffer for the library's kernels (quantized rows, sampling keys): it
 * grows to a call's need, up to SCRATCH_KEEP bytes stay for the thread's next call (a decode step
 * needs a few KiB, a 512-token prompt ~2 MiB, a 50 k vocabulary 400 KiB), a bigger one is freed
 * when its call is done, and what stays is freed when the thread ends. A call uses it from
 * scratch_for until scratch_done, and calls nothing else that does meanwhile. */
#ifndef ORTGEN_SCRATCH_H
#define ORTGEN_SCRATCH_H

#include <stddef.h>

#define SCRATCH_KEEP ((size_t)8 << 20)

/* at least `size` bytes, 64-byte aligned; NULL when out of memory */
void *scratch_for(size_t size);
/* the call is done with it */
void scratch_done(void);

#endif
