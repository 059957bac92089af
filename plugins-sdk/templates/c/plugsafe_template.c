/*
 * A plugsafe plugin in C. Build it with `make`; the plugin is plugsafe_template.wasm.
 * Test it with `python -m pytest` (see test_plugin.py).
 */
#define PLUGSAFE_IMPLEMENTATION
#include "plugsafe.h"

/* shout("hello") returns "HELLO"; empty input is an error (GuestError on the host).
   It works on the input buffer in place, so the output costs no copy and no allocation. */
PLUGSAFE_EXPORT(shout) {
    size_t i;
    if (input_len == 0) return plugsafe_error("nothing to shout");
    for (i = 0; i < input_len; i++) {
        if (input[i] >= 'a' && input[i] <= 'z') input[i] = (uint8_t)(input[i] - 'a' + 'A');
    }
    return plugsafe_output(input, input_len);
}
